#!/usr/bin/env bash
# The project's test command (the README's second command, and what .ci/run calls):
# formatting, lints (Rust and shell), a short run of every fuzz target, then every test in
# the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings
if command -v shellcheck >/dev/null; then
  shellcheck scripts/*.sh .ci/run
else
  echo "test.sh: shellcheck not found, shell scripts not linted (.ci/run installs it)" >&2
fi
# Every fuzz target briefly (cargo-fuzz on stable through RUSTC_BOOTSTRAP=1; scripts/fuzz.sh
# runs them long). Its own target dir: sanitizer builds must not evict the tests' artifacts.
CARGO_TARGET_DIR="$HOME/.cache/zonebench/fuzz-target" scripts/fuzz.sh 20
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  # nextest does not run doctests
  cargo test --workspace --doc -q
else
  echo "test.sh: cargo-nextest not found, using cargo test" >&2
  cargo test --workspace --no-fail-fast "$@"
fi

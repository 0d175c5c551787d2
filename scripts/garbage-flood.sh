#!/usr/bin/env bash
# A flood of garbage on every port of a fresh agent for SECONDS (default 60), loopback only:
# prints the agent's RSS and open descriptors before, at most during and after the flood,
# then runs real tcp-rr, udp-rr and http tests through its control API. The hostile-client
# test (agents/tests/hostile.rs) runs the same flood for 8 s under a low descriptor limit.
#
#   scripts/garbage-flood.sh [SECONDS] [-- EXTRA ARGS: --threads N --hold N --nofile N]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_ARG=${1:-60}
shift || true
[[ ${1:-} == "--" ]] && shift
TARGET=${CARGO_TARGET_DIR:-target}
nice cargo build --release -q -p zonebench-agent --bin zonebench-agent --example garbage_flood
exec "$TARGET/release/examples/garbage_flood" --agent "$TARGET/release/zonebench-agent" --seconds "$SECONDS_ARG" "$@"

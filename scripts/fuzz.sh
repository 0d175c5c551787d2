#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 30) and prints, per target,
# libFuzzer's executions and coverage. Exits non-zero when a target crashes (a panic, an
# out-of-memory or a hang), naming the target and the file that reproduces it:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET FILE      (from fuzz/)
#
# Only the stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it take the nightly flags
# cargo-fuzz passes (sanitizer coverage, -Zsanitizer). cargo-fuzz is installed from crates.io
# when missing. Build caches, the growing corpora and crash files live outside the clone:
#   CARGO_TARGET_DIR            default ~/.cache/zonebench/fuzz-target
#   ZONEBENCH_FUZZ_DIR          corpora and artifacts, default ~/.cache/zonebench/fuzz
#   ZONEBENCH_FUZZ_SANITIZER    address (default) or none
# Each corpus starts from the committed seeds (fuzz/corpus/TARGET) and the test fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds="${1:-30}"
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2; }
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/zonebench/fuzz-target}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
work="${ZONEBENCH_FUZZ_DIR:-$HOME/.cache/zonebench/fuzz}"
sanitizer="${ZONEBENCH_FUZZ_SANITIZER:-address}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install --locked --quiet cargo-fuzz
fi

# The test fixtures each target starts from, besides its committed seeds.
fixtures() {
  case "$1" in
    scenario) printf '%s\n' scenarios/*.toml ;;
    hints_input)
      printf '%s\n' harness/tests/fixtures/hints/* harness/tests/fixtures/kube/*nodes*.json \
        harness/tests/fixtures/kube/*endpointslices*.json harness/tests/fixtures/kube/*service*.json
      ;;
    results) printf '%s\n' harness/tests/data/quick-lab.json harness/tests/data/golden/results.json ;;
  esac
}

cd "$root/fuzz"
cargo fuzz build --sanitizer "$sanitizer"
mapfile -t targets < <(cargo fuzz list)
cd "$root"

crashes=()
for t in "${targets[@]}"; do
  corpus="$work/corpus/$t"
  artifacts="$work/artifacts/$t"
  log="$work/logs/$t.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  if [[ -d fuzz/corpus/$t ]]; then
    cp -f fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  fi
  while read -r f; do
    [[ -f $f ]] && cp -f "$f" "$corpus/seed-$(basename "$f")"
  done < <(fixtures "$t")
  status=0
  (cd fuzz && cargo fuzz run --sanitizer "$sanitizer" "$t" "$corpus" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts/") \
    >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -n1 || true)
  printf '%-12s executions %s (%s exec/s), %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-coverage unknown}"
  if ((status != 0)); then
    crash=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n1)
    crashes+=("$t: ${crash:-no crash file (see $log)}")
    grep -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY)' "$log" | head -n5 >&2 || true
  fi
done

if ((${#crashes[@]})); then
  echo "fuzz.sh: ${#crashes[@]} target(s) crashed:" >&2
  printf '  %s\n' "${crashes[@]}" >&2
  echo "reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET FILE); logs in $work/logs" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each, no crash"

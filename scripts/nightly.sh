#!/usr/bin/env bash
# The nightly regression job: run a scenario, compare the run with its baseline, append the
# run's key figures to the history, draw the trend, write a Markdown summary and a JUnit
# file, and exit with the verdict. Runs the same on a CI runner, a cron host or by hand.
#
#   scripts/nightly.sh [SCENARIO] [zonebench run options: --set KEY=VALUE, --platform P]
#
# SCENARIO defaults to scenarios/nightly.toml. Files (all in the run directory):
#   results.json, report.html, charts/   the run (zonebench run)
#   summary.md    verdict, regressions, warnings (also appended to $GITHUB_STEP_SUMMARY)
#   junit.xml     one test case per measurement; a regression is a failure
#   compare.json  the whole comparison
#   trend.svg     the history's figures over time
#
# Environment:
#   ZONEBENCH      zonebench binary (default: cargo build --release, then target/release/zonebench)
#   OUT            run directory (default results/runs/<UTC time>-nightly-<scenario file name>)
#   BASELINE       baseline results.json (default results/baselines/<scenario name>.json);
#                  when it does not exist, this run becomes it (commit it) unless
#                  REQUIRE_BASELINE=1, which makes a missing baseline an error
#   HISTORY        history file (default results/history.csv)
#   THRESHOLD_PCT  relative change that counts (default 5)
#   METRICS        the metrics that can fail the night, space-separated (default all: p50 p99
#                  connect_p50 connect_p99 throughput loss_pct); tails need many repeats to
#                  judge on a busy machine, so a gate may leave them out
#
# Exit: 0 no regression, 3 a significant regression, 1 the run or a step failed, 2 usage.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

scenario=scenarios/nightly.toml
if [[ $# -gt 0 && $1 != -* ]]; then
  scenario=$1
  shift
fi
[[ -f $scenario ]] || { echo "nightly.sh: no scenario file $scenario" >&2; exit 2; }

if [[ -z ${ZONEBENCH:-} ]]; then
  cargo build --release -q -p zonebench || { echo "nightly.sh: building zonebench failed" >&2; exit 1; }
  ZONEBENCH="${CARGO_TARGET_DIR:-target}/release/zonebench"
fi
[[ -x $ZONEBENCH ]] || { echo "nightly.sh: $ZONEBENCH is not an executable" >&2; exit 2; }

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=${OUT:-results/runs/$stamp-nightly-$(basename "$scenario" .toml)}
history=${HISTORY:-results/history.csv}
threshold=${THRESHOLD_PCT:-5}

echo "nightly: running $scenario into $out" >&2
mkdir -p "$(dirname "$out")"
"$ZONEBENCH" run "$scenario" --out "$out" "$@" 2>&1 | tee "$out.run.log" >&2
run_rc=${PIPESTATUS[0]}
mkdir -p "$out"
mv "$out.run.log" "$out/run.log" 2>/dev/null || true
if [[ ! -f $out/results.json ]]; then
  echo "nightly: the run wrote no results (exit $run_rc); its log:" >&2
  cat "$out/run.log" >&2
  exit 1
fi
[[ $run_rc -eq 0 ]] || echo "nightly: the run ended with exit $run_rc (see $out/run.log); comparing what it measured" >&2

# The scenario's name as run (serde_json writes it on its own line).
name=$(sed -n 's/^  "scenario": "\(.*\)",$/\1/p' "$out/results.json" | head -n1)
[[ -n $name ]] || { echo "nightly: cannot read the scenario name from $out/results.json" >&2; exit 1; }
baseline=${BASELINE:-results/baselines/$name.json}

note=""
if [[ ! -f $baseline ]]; then
  if [[ ${REQUIRE_BASELINE:-0} == 1 ]]; then
    echo "nightly: no baseline at $baseline (REQUIRE_BASELINE=1)" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$baseline")"
  cp "$out/results.json" "$baseline"
  note="No baseline existed: this run is now the baseline ($baseline); commit it. The comparison below is the run against itself."
  echo "nightly: $note" >&2
fi

compare=("$ZONEBENCH" compare "$baseline" "$out" --threshold-pct "$threshold")
for m in ${METRICS:-}; do
  compare+=(--metric "$m")
done
"${compare[@]}" --format markdown --output "$out/compare.md"
verdict=$?
"${compare[@]}" --format junit --output "$out/junit.xml" 2>/dev/null
junit_rc=$?
"${compare[@]}" --format json --output "$out/compare.json" 2>/dev/null
if [[ $verdict -ne 0 && $verdict -ne 3 ]] || [[ $junit_rc -ne $verdict ]]; then
  echo "nightly: comparing with $baseline failed (exit $verdict)" >&2
  exit 1
fi

"$ZONEBENCH" history add "$out" --file "$history" || { echo "nightly: appending to $history failed" >&2; exit 1; }
"$ZONEBENCH" trend --file "$history" --scenario "$name" --out "$out/trend.svg" >/dev/null ||
  echo "nightly: drawing the trend failed; the verdict stands" >&2

{
  echo "# zonebench nightly: $name ($stamp)"
  echo
  echo "- run: \`$out\` (report: \`$out/report.html\`), exit $run_rc"
  echo "- baseline: \`$baseline\`"
  echo "- history: \`$history\`, trend: \`$out/trend.svg\`"
  [[ -n $note ]] && echo "- $note"
  [[ $run_rc -ne 0 ]] && echo "- **the run did not finish cleanly (exit $run_rc)**: see \`$out/run.log\`"
  echo
  cat "$out/compare.md"
} > "$out/summary.md"
[[ -n ${GITHUB_STEP_SUMMARY:-} ]] && cat "$out/summary.md" >> "$GITHUB_STEP_SUMMARY"
cat "$out/summary.md"

if [[ $verdict -eq 3 ]]; then
  exit 3
fi
[[ $run_rc -eq 0 ]] || exit 1
exit 0

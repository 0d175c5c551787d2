#!/usr/bin/env bash
# What running clients together costs the coordinator: a concurrent group of 6 clients (2 in
# each of 3 zones) against one server, repeated, and for each group the coordinator's wall
# time (arming the first client to the last result, `groups[].elapsed_ns`) against the test's
# own warm-up plus window. It prints the overhead per group and the median, writes them as
# JSON, and exits non-zero when the median is 5 % or more (the aim is < 5 %).
#
# Usage: scripts/bench-concurrency.sh [--platform lab|local] [--duration SECS] [--repeat N] [--out FILE]
#   --platform  where the agents run (default: lab when root, else local)
#   --duration  measured seconds per group (default 5; warm-up 500 ms on top)
#   --repeat    groups measured (default 5)
#   --out       JSON output (default results/runs/bench-concurrency-<time>.json)
#
# Traffic goes only to loopback (local) or to the lab's own namespaces.
set -euo pipefail

DUR=5
REPEAT=5
PLATFORM=""
OUT=""
while (($#)); do
  case "$1" in
    --platform) PLATFORM="$2"; shift 2 ;;
    --duration) DUR="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "bench-concurrency: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$DUR" =~ ^[0-9]+$ && "$DUR" -ge 1 && "$DUR" -le 600 ]] || { echo "bench-concurrency: --duration must be 1..600 seconds" >&2; exit 2; }
[[ "$REPEAT" =~ ^[0-9]+$ && "$REPEAT" -ge 1 && "$REPEAT" -le 50 ]] || { echo "bench-concurrency: --repeat must be 1..50" >&2; exit 2; }
if [[ -z "$PLATFORM" ]]; then if [[ $EUID -eq 0 ]]; then PLATFORM=lab; else PLATFORM=local; fi; fi
[[ "$PLATFORM" == lab || "$PLATFORM" == local ]] || { echo "bench-concurrency: --platform must be lab or local" >&2; exit 2; }
command -v jq >/dev/null || { echo "bench-concurrency: needs jq (apt-get install jq)" >&2; exit 1; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
mkdir -p results/runs
OUT="${OUT:-results/runs/bench-concurrency-$(date -u +%Y%m%dT%H%M%SZ).json}"
cargo build --release -q -p zonebench
ZB="${CARGO_TARGET_DIR:-$ROOT/target}/release/zonebench"

WORK="$(mktemp -d /tmp/zb-conc.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/s.toml" <<TOML
name = "bench-concurrency"
[lab]
zones = "a,b,c"
nodes_per_zone = 2
[agents]
clients_per_zone = 2
[defaults]
duration = "${DUR}s"
warmup = "500ms"
repeat = $REPEAT
[[tests]]
kind = "tcp-rr"
# zone-matrix: one group per server zone, each with all 6 clients.
pairs = "zone-matrix"
clients = "all"
TOML

"$ZB" run --platform "$PLATFORM" "$WORK/s.toml" --out "$WORK/run" >"$WORK/log" 2>&1 \
  || { cat "$WORK/log" >&2; echo "bench-concurrency: the run failed" >&2; exit 1; }

WINDOW_NS=$(( (DUR * 1000 + 500) * 1000000 ))
jq --argjson window "$WINDOW_NS" --arg platform "$PLATFORM" '
  [.groups[] | {id, clients: (.clients | length), overlap_pct, elapsed_ns,
                overhead_pct: ((.elapsed_ns - $window) * 100 / $window)}] as $g
  | ($g | map(.overhead_pct) | sort) as $o
  | {platform: $platform, window_ns: $window, groups: $g,
     median_overhead_pct: $o[(($o | length) / 2 | floor)],
     max_overhead_pct: ($o | max),
     min_overlap_pct: ($g | map(.overlap_pct) | min)}' "$WORK/run/results.json" >"$OUT"

jq -r '.groups[] | "\(.id)\t\(.clients) clients\toverlap \(.overlap_pct | . * 10 | round / 10) %\tcoordinator +\(.overhead_pct | . * 100 | round / 100) %"' "$OUT"
jq -r '"median coordinator overhead: \(.median_overhead_pct | . * 100 | round / 100) % of warm-up + window (max \(.max_overhead_pct | . * 100 | round / 100) %); lowest overlap \(.min_overlap_pct | . * 10 | round / 10) %"' "$OUT"
echo "json: $OUT"
jq -e '.median_overhead_pct < 5' "$OUT" >/dev/null || { echo "bench-concurrency: the coordinator adds 5 % or more" >&2; exit 1; }

#!/usr/bin/env bash
# Side-by-side benchmark of zonebench-agent against the peer tools users trust, on loopback,
# in one run: wrk (HTTP load and connect-close), nginx (HTTP server), iperf3 (TCP and UDP
# throughput), sockperf (TCP ping-pong latency). It prints a table of ratios and writes them
# as JSON. Figures are ratios measured in the same run, so the machine's speed cancels out.
#
# Usage: scripts/bench-peers.sh [--duration SECS] [--repeat N] [--out FILE]
#   --duration  seconds per measurement (default 5)
#   --repeat    measurements per tool, interleaved (ours, peer, ours, peer…); the median is
#               used (default 3)
#   --out       JSON output (default results/runs/bench-peers-<time>.json)
#
# On 2+ cores, servers are pinned to CPU 0 and clients to CPU 1 (both tools alike), so a
# client never competes with its server for a core. Traffic goes only to 127.0.0.1.
set -euo pipefail

DUR=5
REPEAT=3
OUT=""
while (($#)); do
  case "$1" in
    --duration) DUR="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "bench-peers: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$DUR" =~ ^[0-9]+$ && "$DUR" -ge 1 && "$DUR" -le 600 ]] || { echo "bench-peers: --duration must be 1..600 seconds" >&2; exit 2; }
[[ "$REPEAT" =~ ^[0-9]+$ && "$REPEAT" -ge 1 && "$REPEAT" -le 20 ]] || { echo "bench-peers: --repeat must be 1..20" >&2; exit 2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
mkdir -p results/runs
OUT="${OUT:-results/runs/bench-peers-$(date -u +%Y%m%dT%H%M%SZ).json}"

# --- peer tools (Debian packages) -------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v sockperf >/dev/null || need+=(sockperf)
command -v nginx >/dev/null || need+=(nginx-light)
command -v jq >/dev/null || need+=(jq)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
  echo "bench-peers: installing ${need[*]}" >&2
  if [[ $EUID -ne 0 ]]; then echo "bench-peers: need root to install ${need[*]}" >&2; exit 1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The Debian package starts a system nginx; ours runs on its own port with its own config.
  systemctl stop nginx 2>/dev/null || nginx -s stop 2>/dev/null || true
fi

cargo build --release -q -p zonebench-agent
AGENT="${CARGO_TARGET_DIR:-$ROOT/target}/release/zonebench-agent"

if (($(nproc) >= 2)); then SRV="taskset -c 0"; CLI="taskset -c 1"; else SRV=""; CLI=""; fi

WORK="$(mktemp -d /tmp/zb-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

wait_port() { # proto port
  for _ in $(seq 1 100); do
    if ss -H -ln"${1:0:1}" "sport = :$2" | grep -q .; then return 0; fi
    sleep 0.05
  done
  echo "bench-peers: nothing listens on $1 port $2" >&2; exit 1
}

NGINX_PORT=18080
AGENT_TCP=17101 AGENT_UDP=17102 AGENT_HTTP=17180
SOCKPERF_PORT=11111 IPERF_PORT=15201

# nginx: one worker, `return 200`, no logs: the fastest static answer there is.
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$NGINX_PORT reuseport; location / { return 200 "ok\n"; } }
}
EOF
$SRV nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & PIDS+=($!)
# The agent's servers with one worker thread, matching nginx's one worker.
$SRV "$AGENT" serve --listen 127.0.0.1 --tcp-port $AGENT_TCP --udp-port $AGENT_UDP --http-port $AGENT_HTTP \
  --workers 1 --id bench-agent 2>"$WORK/agent.log" & PIDS+=($!)
AGENT_PID=$!
$SRV sockperf server --tcp -i 127.0.0.1 -p $SOCKPERF_PORT >"$WORK/sockperf-server.log" 2>&1 & PIDS+=($!)
$SRV iperf3 -s -p $IPERF_PORT >"$WORK/iperf3-server.log" 2>&1 & PIDS+=($!)
wait_port tcp $NGINX_PORT; wait_port tcp $AGENT_TCP; wait_port udp $AGENT_UDP; wait_port tcp $AGENT_HTTP
wait_port tcp $SOCKPERF_PORT; wait_port tcp $IPERF_PORT

# Idle memory first, before any test has touched the agent.
sleep 1
IDLE_RSS_KIB=$(awk '/^VmRSS:/ {print $2}' "/proc/$AGENT_PID/status")

ours() { $CLI "$AGENT" client "$@" --duration "${DUR}s" --warmup 1s -o json; }

# Each measure_* prints one number.
wrk_rps() { # url [extra wrk args]
  local url="$1"; shift
  $CLI wrk -t1 -c50 -d"${DUR}s" "$@" "$url" | awk '/^Requests\/sec:/ {print $2}'
}
m_http_load_ours() { ours http --target 127.0.0.1:$NGINX_PORT --connections 50 --threads 1 | jq '.metrics.requests_per_sec'; }
m_http_load_peer() { wrk_rps "http://127.0.0.1:$NGINX_PORT/"; }
m_http_server_ours() { wrk_rps "http://127.0.0.1:$AGENT_HTTP/"; }
m_http_server_peer() { wrk_rps "http://127.0.0.1:$NGINX_PORT/"; }
m_tcp_tput_ours() { ours tcp-stream --target 127.0.0.1:$AGENT_TCP | jq '.metrics.throughput_bps'; }
m_tcp_tput_peer() {
  $CLI iperf3 -c 127.0.0.1 -p $IPERF_PORT -t "$DUR" -O 1 -J | jq '.end.sum_received.bits_per_second'
}
m_tcp_lat_ours() { ours tcp-rr --target 127.0.0.1:$AGENT_TCP | jq '.latency.p50_ns / 1000'; }
m_tcp_lat_peer() { # sockperf prints µs; --full-rtt makes it a round trip like ours
  $CLI sockperf ping-pong --tcp -i 127.0.0.1 -p $SOCKPERF_PORT -t "$DUR" --full-rtt 2>&1 |
    awk '/percentile 50.000 =/ {print $NF}'
}
m_crr_ours() {
  ours http --target 127.0.0.1:$NGINX_PORT --connections 50 --threads 1 --connection-close | jq '.metrics.requests_per_sec'
}
m_crr_peer() { wrk_rps "http://127.0.0.1:$NGINX_PORT/" -H 'Connection: close'; }

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "null"} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }

declare -A RES
run_pair() { # name
  local name="$1" o p
  : >"$WORK/$name.ours"; : >"$WORK/$name.peer"
  for _ in $(seq 1 "$REPEAT"); do
    o=$("m_${name}_ours") || o=""; [[ -n "$o" && "$o" != null ]] && echo "$o" >>"$WORK/$name.ours"
    p=$("m_${name}_peer") || p=""; [[ -n "$p" && "$p" != null ]] && echo "$p" >>"$WORK/$name.peer"
  done
  RES[$name.ours]=$(median <"$WORK/$name.ours")
  RES[$name.peer]=$(median <"$WORK/$name.peer")
  echo "  $name: ours $(tr '\n' ' ' <"$WORK/$name.ours")| peer $(tr '\n' ' ' <"$WORK/$name.peer")" >&2
}

echo "bench-peers: ${DUR}s per measurement, ${REPEAT} interleaved repeats, median kept" >&2
for t in http_load http_server tcp_tput tcp_lat crr; do run_pair "$t"; done

# UDP: first find the rate iperf3 reaches unpaced, then send at exactly that rate with ours;
# the figure is loss at equal offered load.
udp_iperf=$($CLI iperf3 -c 127.0.0.1 -p $IPERF_PORT -u -b 0 -l 1460 -t "$DUR" -J)
UDP_RATE=$(jq '.end.sum.bits_per_second | floor' <<<"$udp_iperf")
UDP_PEER_LOSS=$(jq '.end.sum.lost_percent' <<<"$udp_iperf")
udp_ours=$(ours udp-stream --target 127.0.0.1:$AGENT_UDP --rate "$UDP_RATE" --size 1460)
UDP_OURS_LOSS=$(jq '.metrics.loss_pct' <<<"$udp_ours")
UDP_OURS_RATE=$(jq '(.metrics.sent_packets * 1460 * 8 * 1e9 / .duration_ns) | floor' <<<"$udp_ours")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0 || a == "null" || b == "null") print "null"; else printf "%.3f\n", a / b }'; }
verdict() { # value op limit
  awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN { if (v == "null") {print "FAIL"; exit}
    ok = (op == ">=") ? (v >= l) : (v <= l); print ok ? "ok" : "FAIL" }'
}

R_HTTP_LOAD=$(ratio "${RES[http_load.ours]}" "${RES[http_load.peer]}")
R_HTTP_SERVER=$(ratio "${RES[http_server.ours]}" "${RES[http_server.peer]}")
R_TCP_TPUT=$(ratio "${RES[tcp_tput.ours]}" "${RES[tcp_tput.peer]}")
R_TCP_LAT=$(ratio "${RES[tcp_lat.ours]}" "${RES[tcp_lat.peer]}")
R_CRR=$(ratio "${RES[crr.ours]}" "${RES[crr.peer]}")
UDP_OK=$(awk -v o="$UDP_OURS_LOSS" -v p="$UDP_PEER_LOSS" 'BEGIN { print (o != "null" && o <= p) ? "ok" : "FAIL" }')
IDLE_MIB=$(awk -v k="$IDLE_RSS_KIB" 'BEGIN { printf "%.1f\n", k / 1024 }')

V_HTTP_LOAD=$(verdict "$R_HTTP_LOAD" ">=" 0.9)
V_HTTP_SERVER=$(verdict "$R_HTTP_SERVER" ">=" 0.9)
V_TCP_TPUT=$(verdict "$R_TCP_TPUT" ">=" 0.9)
V_TCP_LAT=$(verdict "$R_TCP_LAT" "<=" 1.2)
V_CRR=$(verdict "$R_CRR" ">=" 0.9)
V_RSS=$(verdict "$IDLE_MIB" "<=" 20)

printf '\n%-34s %16s %16s %8s %8s %s\n' "comparison" "zonebench" "peer" "ratio" "must" "verdict"
printf '%-34s %16.0f %16.0f %8s %8s %s\n' "HTTP load req/s (vs wrk, nginx)" "${RES[http_load.ours]}" "${RES[http_load.peer]}" "$R_HTTP_LOAD" ">=0.9" "$V_HTTP_LOAD"
printf '%-34s %16.0f %16.0f %8s %8s %s\n' "HTTP server req/s (wrk; vs nginx)" "${RES[http_server.ours]}" "${RES[http_server.peer]}" "$R_HTTP_SERVER" ">=0.9" "$V_HTTP_SERVER"
printf '%-34s %16.0f %16.0f %8s %8s %s\n' "TCP stream bit/s (vs iperf3)" "${RES[tcp_tput.ours]}" "${RES[tcp_tput.peer]}" "$R_TCP_TPUT" ">=0.9" "$V_TCP_TPUT"
printf '%-34s %16.1f %16.1f %8s %8s %s\n' "TCP RR p50 µs (vs sockperf)" "${RES[tcp_lat.ours]}" "${RES[tcp_lat.peer]}" "$R_TCP_LAT" "<=1.2" "$V_TCP_LAT"
printf '%-34s %16.0f %16.0f %8s %8s %s\n' "Connect-close req/s (vs wrk)" "${RES[crr.ours]}" "${RES[crr.peer]}" "$R_CRR" ">=0.9" "$V_CRR"
printf '%-34s %16s %16s %8s %8s %s\n' "UDP loss % at iperf3's rate" "$UDP_OURS_LOSS" "$UDP_PEER_LOSS" "-" "<=peer" "$UDP_OK"
printf '%-34s %16s %16s %8s %8s %s\n' "  (rate bit/s: ours sent, iperf3)" "$UDP_OURS_RATE" "$UDP_RATE" "" "" ""
printf '%-34s %16s %16s %8s %8s %s\n' "Agent idle RSS MiB" "$IDLE_MIB" "-" "-" "<=20" "$V_RSS"

jq -n \
  --arg at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg kernel "$(uname -r)" --argjson cores "$(nproc)" \
  --argjson dur "$DUR" --argjson repeat "$REPEAT" \
  --argjson hl_o "${RES[http_load.ours]}" --argjson hl_p "${RES[http_load.peer]}" --argjson hl_r "$R_HTTP_LOAD" \
  --argjson hs_o "${RES[http_server.ours]}" --argjson hs_p "${RES[http_server.peer]}" --argjson hs_r "$R_HTTP_SERVER" \
  --argjson tt_o "${RES[tcp_tput.ours]}" --argjson tt_p "${RES[tcp_tput.peer]}" --argjson tt_r "$R_TCP_TPUT" \
  --argjson tl_o "${RES[tcp_lat.ours]}" --argjson tl_p "${RES[tcp_lat.peer]}" --argjson tl_r "$R_TCP_LAT" \
  --argjson cr_o "${RES[crr.ours]}" --argjson cr_p "${RES[crr.peer]}" --argjson cr_r "$R_CRR" \
  --argjson ur "$UDP_RATE" --argjson uor "$UDP_OURS_RATE" --argjson ul_o "$UDP_OURS_LOSS" --argjson ul_p "$UDP_PEER_LOSS" \
  --argjson rss "$IDLE_MIB" \
  --arg v1 "$V_HTTP_LOAD" --arg v2 "$V_HTTP_SERVER" --arg v3 "$V_TCP_TPUT" --arg v4 "$V_TCP_LAT" --arg v5 "$V_CRR" \
  --arg v6 "$UDP_OK" --arg v7 "$V_RSS" \
  '{measured_at: $at, kernel: $kernel, cores: $cores, duration_s: $dur, repeat: $repeat,
    http_load:   {ours_rps: $hl_o, wrk_rps: $hl_p, ratio: $hl_r, must: ">= 0.9", verdict: $v1},
    http_server: {agent_rps: $hs_o, nginx_rps: $hs_p, ratio: $hs_r, must: ">= 0.9", verdict: $v2},
    tcp_stream:  {ours_bps: $tt_o, iperf3_bps: $tt_p, ratio: $tt_r, must: ">= 0.9", verdict: $v3},
    tcp_rr_p50:  {ours_us: $tl_o, sockperf_us: $tl_p, ratio: $tl_r, must: "<= 1.2", verdict: $v4},
    connect_close: {ours_rps: $cr_o, wrk_rps: $cr_p, ratio: $cr_r, must: ">= 0.9", verdict: $v5},
    udp: {iperf3_rate_bps: $ur, ours_sent_rate_bps: $uor, ours_loss_pct: $ul_o, iperf3_loss_pct: $ul_p,
          must: "ours_loss_pct <= iperf3_loss_pct", verdict: $v6},
    idle_rss_mib: {value: $rss, aim: "<= 20", verdict: $v7}}' >"$OUT"
echo "bench-peers: wrote $OUT" >&2
grep -q FAIL "$OUT" && exit 3 || exit 0

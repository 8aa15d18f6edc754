#!/usr/bin/env bash
# Throughput through `oxcd gateway start` against direct connections, one
# oxcd member behind it: the same put and range loads (oxcd-bench, 100
# clients over 10 connections) alternate, direct then through the gateway,
# RUNS times each. Prints requests/s medians and the gateway/direct ratio.
#
# Usage: bench/gateway.sh [--total N] [--runs R] [--no-build] [--out FILE]
# Environment: OXCD_BIN (default target/release/oxcd).
#
# Only processes this script started are signalled, by their saved pid.
# All traffic goes to 127.0.0.1; every bench run has --timeout.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OXCD_BIN="${OXCD_BIN:-$ROOT/target/release/oxcd}"
BENCH="$ROOT/target/release/oxcd-bench"
TOTAL=100000
RUNS=3
BUILD=1
OUT=""
PORT=25479
GW_PORT=25490
while [ $# -gt 0 ]; do
  case "$1" in
    --total) TOTAL="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
for n in "$TOTAL" "$RUNS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "--total and --runs take positive integers" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "needs jq" >&2; exit 2; }
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release -p oxcd -p oxcd-bench >&2)
fi

WORK="$(mktemp -d /tmp/oxcd-gw.XXXXXX)"
GW_PID=""
# shellcheck source=bench/single.sh
. "$ROOT/bench/single.sh"
trap 'stop; [ -n "$GW_PID" ] && kill -TERM "$GW_PID" 2>/dev/null; rm -rf "$WORK"' EXIT

start "$OXCD_BIN" "$WORK/m"
"$OXCD_BIN" gateway start --endpoints "$EP" --listen-addr "127.0.0.1:$GW_PORT" 2>"$WORK/gw.log" &
GW_PID=$!
for _ in $(seq 1 100); do grep -q "ready to proxy" "$WORK/gw.log" && break; sleep 0.05; done

# rps ENDPOINT WORKLOAD: requests per second of one run.
rps() {
  local args=("$2" --total "$TOTAL")
  [ "$2" = range ] && args=(range foo --total "$TOTAL")
  "$BENCH" --endpoints "$1" --conns 10 --clients 100 --timeout 300 --json "${args[@]}" |
    jq -r .ops_per_sec
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A R
for w in put range; do
  : >"$WORK/$w.direct"
  : >"$WORK/$w.gw"
  for _ in $(seq 1 "$RUNS"); do
    rps "$EP" "$w" >>"$WORK/$w.direct"
    rps "127.0.0.1:$GW_PORT" "$w" >>"$WORK/$w.gw"
  done
  R[$w,direct]=$(median <"$WORK/$w.direct")
  R[$w,gw]=$(median <"$WORK/$w.gw")
done

table() {
  echo "| workload ($TOTAL requests, 100 clients, $RUNS runs, medians) | direct req/s | through the gateway req/s | ratio |"
  echo "|---|---|---|---|"
  for w in put range; do
    awk -v w="$w" -v d="${R[$w,direct]}" -v g="${R[$w,gw]}" \
      'BEGIN { printf "| %s | %.0f | %.0f | %.2f |\n", w, d, g, g / d }'
  done
}
table
[ -n "$OUT" ] && table >"$OUT"
exit 0

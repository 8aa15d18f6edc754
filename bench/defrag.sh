#!/usr/bin/env bash
# Put latency while the backend is defragmented, etcd (/usr/bin/etcd)
# beside oxcd. Each server gets the same history: N keys (256-byte values)
# written twice, then compacted to the current revision, so that about
# half of the file is free pages. Then the same put load (10 clients, new
# keys, 128-byte values) runs twice: once idle, once with `etcdctl defrag`
# started a second into it. The table gives the defrag's duration, the
# put p99 / max of both runs, and the file size before and after.
#
# With --reps R the history is built once per server and kept as a
# template; each repetition starts the server on a fresh copy of it, the
# servers alternating, and the table ends with each server's medians (the
# ratio p99 during / p99 idle taken per repetition).
#
# Usage: bench/defrag.sh [--keys N] [--puts N] [--reps R] [--no-build] [--out FILE]
# Environment: ETCD_BIN (default /usr/bin/etcd), OXCD_BIN (default
# target/release/oxcd).
#
# Only processes this script started are signalled, by their saved pid.
# All traffic goes to 127.0.0.1; every bench run has --timeout.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
OXCD_BIN="${OXCD_BIN:-$ROOT/target/release/oxcd}"
BENCH="$ROOT/target/release/oxcd-bench"
KEYS=1000000
PUTS=60000
REPS=1
BUILD=1
OUT=""
PORT=23479
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS="$2"; shift 2 ;;
    --puts) PUTS="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
for n in "$KEYS" "$PUTS" "$REPS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "--keys, --puts and --reps take positive integers" >&2; exit 2; }
done
for tool in jq etcdctl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release -p oxcd -p oxcd-bench >&2)
fi

WORK="$(mktemp -d /tmp/oxcd-defrag.XXXXXX)"
# shellcheck source=bench/single.sh
. "$ROOT/bench/single.sh"
# mib: "dbSize / dbSizeInUse" in MiB
mib() {
  etcdctl --endpoints="$EP" endpoint status -w json |
    jq -r '.[0].Status | "\(.dbSize / 1048576 | floor) / \((.dbSizeInUse // 0) / 1048576 | floor)"'
}
probe() { # the put load whose latency is measured; prints "p99 max"
  "$BENCH" --endpoints "$EP" --conns 2 --clients 10 --timeout 600 --json put \
    --total "$PUTS" --key-size 16 --key-space-size 100000000 --val-size 128 |
    jq -r '"\(.p99_ms) \(.max_ms)"'
}

# A restart on a big history takes etcd a while.
START_POLLS=1200
bin_of() { if [ "$1" = oxcd ]; then echo "$OXCD_BIN"; else echo "$ETCD_BIN"; fi; }

# The same history for each server, kept as a template.
for kind in etcd oxcd; do
  start "$(bin_of "$kind")" "$WORK/$kind.template"
  load "$KEYS" "$KEYS" 256
  load "$KEYS" "$KEYS" 256
  etcdctl --endpoints="$EP" --command-timeout=600s compact "$(rev)" --physical >/dev/null
  stop
done

# rep KIND: one repetition on a fresh copy of the template; sets LAST to
# "before|took|after|idle p99|idle max|during p99|during max" (not run in
# a subshell, so that `stop` and the exit trap see the server's pid).
rep() {
  local d="$WORK/$1" idle during took before after probe_pid t0 t1
  rm -rf "$d"
  cp -a "$WORK/$1.template" "$d"
  sync
  start "$(bin_of "$1")" "$d"
  before=$(mib)
  idle=$(probe)
  probe >"$WORK/$1.probe" &
  probe_pid=$!
  sleep 1
  t0=$(date +%s.%N)
  etcdctl --endpoints="$EP" --command-timeout=600s defrag >/dev/null
  t1=$(date +%s.%N)
  after=$(mib)
  wait "$probe_pid"
  during=$(cat "$WORK/$1.probe")
  took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  stop
  LAST="$before|$took|$after|${idle% *}|${idle#* }|${during% *}|${during#* }"
}

declare -A ROWS
for r in $(seq 1 "$REPS"); do
  # Alternate which server goes first.
  order="etcd oxcd"; [ $((r % 2)) = 0 ] && order="oxcd etcd"
  for kind in $order; do
    rep "$kind"
    ROWS[$kind]+="$LAST"$'\n'
  done
done

table() {
  echo "| server | db / in use MiB before | defrag s | db / in use MiB after | idle put p99 / max ms | put p99 / max ms during defrag | p99 during / idle |"
  echo "|---|---|---|---|---|---|---|"
  for kind in etcd oxcd; do
    while IFS='|' read -r before took after ip im dp dm; do
      [ -n "$before" ] || continue
      echo "| $kind | $before | $took | $after | $ip / $im | $dp / $dm | $(ratio "$dp" "$ip") |"
    done <<<"${ROWS[$kind]}"
  done
  if [ "$REPS" -gt 1 ]; then
    for kind in etcd oxcd; do
      r="${ROWS[$kind]}"
      echo "| $kind median | | $(col_median "$r" 2) | | $(col_median "$r" 4) / $(col_median "$r" 5) | $(col_median "$r" 6) / $(col_median "$r" 7) | $(ratio_median "$r" 6 4) |"
    done
  fi
}
table
[ -n "$OUT" ] && table >"$OUT"
exit 0

#!/usr/bin/env bash
# Put latency while `etcdctl snapshot save` streams the backend, etcd
# (/usr/bin/etcd) beside oxcd. Each server gets N keys of 256-byte values
# (default 3 000 000: a database of about 1 GiB). Then the same put load
# (10 clients, new keys, 128-byte values) runs twice: once idle, once with
# `etcdctl snapshot save` started a second into it. The table gives the
# save's duration, the snapshot file's size, and the put p99 / max of
# both runs. With --reps R both runs repeat R times on the same server
# (a save changes nothing), and the table ends with each server's medians
# (the ratio p99 during / p99 idle taken per repetition).
#
# Usage: bench/snapshot-save.sh [--keys N] [--puts N] [--reps R] [--no-build] [--out FILE]
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
KEYS=3000000
PUTS=60000
REPS=1
BUILD=1
OUT=""
PORT=23579
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

WORK="$(mktemp -d /tmp/oxcd-snapsave.XXXXXX)"
# shellcheck source=bench/single.sh
. "$ROOT/bench/single.sh"
probe() { # the put load whose latency is measured; prints "p99 max"
  "$BENCH" --endpoints "$EP" --conns 2 --clients 10 --timeout 600 --json put \
    --total "$PUTS" --key-size 16 --key-space-size 100000000 --val-size 128 |
    jq -r '"\(.p99_ms) \(.max_ms)"'
}

# ROWS[kind]: one "size|took|idle p99|idle max|during p99|during max"
# line per repetition.
declare -A ROWS
for kind in etcd oxcd; do
  bin="$ETCD_BIN"; [ "$kind" = oxcd ] && bin="$OXCD_BIN"
  d="$WORK/$kind"
  start "$bin" "$d"
  load "$KEYS" "$KEYS" 256
  for _ in $(seq 1 "$REPS"); do
    idle=$(probe)
    probe >"$WORK/$kind.probe" &
    probe_pid=$!
    sleep 1
    t0=$(date +%s.%N)
    etcdctl --endpoints="$EP" --command-timeout=600s snapshot save "$WORK/$kind.snap" >/dev/null 2>&1
    t1=$(date +%s.%N)
    wait "$probe_pid"
    during=$(cat "$WORK/$kind.probe")
    took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    size=$(du -m --apparent-size "$WORK/$kind.snap" | cut -f1)
    rm -f "$WORK/$kind.snap"
    ROWS[$kind]+="$size|$took|${idle% *}|${idle#* }|${during% *}|${during#* }"$'\n'
  done
  stop
done

table() {
  echo "| server | snapshot MiB | save s | idle put p99 / max ms | put p99 / max ms during the save | p99 during / idle |"
  echo "|---|---|---|---|---|---|"
  for kind in etcd oxcd; do
    while IFS='|' read -r size took ip im dp dm; do
      [ -n "$size" ] || continue
      echo "| $kind | $size | $took | $ip / $im | $dp / $dm | $(ratio "$dp" "$ip") |"
    done <<<"${ROWS[$kind]}"
  done
  if [ "$REPS" -gt 1 ]; then
    for kind in etcd oxcd; do
      r="${ROWS[$kind]}"
      echo "| $kind median | | $(col_median "$r" 2) | $(col_median "$r" 3) / $(col_median "$r" 4) | $(col_median "$r" 5) / $(col_median "$r" 6) | $(ratio_median "$r" 5 3) |"
    done
  fi
}
table
[ -n "$OUT" ] && table >"$OUT"
exit 0

#!/usr/bin/env bash
# Put latency while `etcdctl snapshot save` streams the backend, etcd
# (/usr/bin/etcd) beside oxcd. Each server gets N keys of 256-byte values
# (default 3 000 000: a database of about 1 GiB). Then the same put load
# (10 clients, new keys, 128-byte values) runs twice: once idle, once with
# `etcdctl snapshot save` started a second into it. The table gives the
# save's duration, the snapshot file's size, and the put p99 / max of
# both runs.
#
# Usage: bench/snapshot-save.sh [--keys N] [--puts N] [--no-build] [--out FILE]
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
BUILD=1
OUT=""
PORT=23579
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS="$2"; shift 2 ;;
    --puts) PUTS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
for n in "$KEYS" "$PUTS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "--keys and --puts take positive integers" >&2; exit 2; }
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

declare -A R
for kind in etcd oxcd; do
  bin="$ETCD_BIN"; [ "$kind" = oxcd ] && bin="$OXCD_BIN"
  d="$WORK/$kind"
  start "$bin" "$d"
  load "$KEYS" "$KEYS" 256
  R[$kind,idle]=$(probe)
  probe >"$WORK/$kind.probe" &
  probe_pid=$!
  sleep 1
  t0=$(date +%s.%N)
  etcdctl --endpoints="$EP" --command-timeout=600s snapshot save "$WORK/$kind.snap" >/dev/null 2>&1
  t1=$(date +%s.%N)
  wait "$probe_pid"
  R[$kind,during]=$(cat "$WORK/$kind.probe")
  R[$kind,took]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  R[$kind,size]=$(du -m --apparent-size "$WORK/$kind.snap" | cut -f1)
  rm -f "$WORK/$kind.snap"
  stop
done

table() {
  echo "| server | snapshot MiB | save s | idle put p99 / max ms | put p99 / max ms during the save |"
  echo "|---|---|---|---|---|"
  for kind in etcd oxcd; do
    read -r ip im <<<"${R[$kind,idle]}"
    read -r dp dm <<<"${R[$kind,during]}"
    echo "| $kind | ${R[$kind,size]} | ${R[$kind,took]} | $ip / $im | $dp / $dm |"
  done
}
table
[ -n "$OUT" ] && table >"$OUT"
exit 0

#!/usr/bin/env bash
# A big key space, etcd (/usr/bin/etcd) beside oxcd: N keys of 256-byte
# values (5M by default, a database of 1.5+ GiB) are put into a fresh
# single member, then measured as a user meets them:
#   load      put throughput while the key space fills (1000 clients on
#             100 connections, sequential keys, each key once);
#   range     linearizable single-key reads of keys drawn at random from
#             the N (100 clients on 10 connections): p50 and p99;
#   restart   the member stopped (SIGTERM) and started again on its data
#             dir: seconds until /health answers 200;
#   cold      the same reads right after the restart;
# and the member's resident memory (VmRSS) after the load, after the reads
# and after the restart, with the database file's size. oxcd's memory
# should follow its caches and index, not the file.
#
# Usage: bench/bigkeys.sh [--keys N] [--reads N] [--no-build] [--out FILE]
# Environment: ETCD_BIN (default /usr/bin/etcd), OXCD_BIN (default
# target/release/oxcd).
#
# Both servers run with --quota-backend-bytes 8 GiB (etcd's 2 GiB default
# would raise NOSPACE under 5M keys). Only processes this script started
# are signalled, by their saved pid. All traffic goes to 127.0.0.1; every
# bench run has --timeout.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OXCD_BIN="${OXCD_BIN:-$ROOT/target/release/oxcd}"
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
BENCH="$ROOT/target/release/oxcd-bench"
KEYS=5000000
READS=100000
BUILD=1
OUT=""
PORT=25579
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS="$2"; shift 2 ;;
    --reads) READS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
for n in "$KEYS" "$READS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "--keys and --reads take positive integers" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "needs jq" >&2; exit 2; }
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release -p oxcd -p oxcd-bench >&2)
fi

WORK="$(mktemp -d /tmp/oxcd-bigkeys.XXXXXX)"
PID=""
stop() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
  fi
}
trap 'stop; rm -rf "$WORK"' EXIT

start() { # BIN DIR: starts a member, waits until /health answers 200
  local bin="$1" dir="$2" i
  "$bin" --name m --data-dir "$dir" \
    --listen-client-urls "http://127.0.0.1:$PORT" --advertise-client-urls "http://127.0.0.1:$PORT" \
    --listen-peer-urls "http://127.0.0.1:$((PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((PORT + 1))" \
    --initial-cluster "m=http://127.0.0.1:$((PORT + 1))" \
    --quota-backend-bytes 8589934592 >>"$dir.log" 2>&1 &
  PID=$!
  for ((i = 0; i < 6000; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" = 200 ] && return 0
    kill -0 "$PID" 2>/dev/null || { echo "member exited, see $dir.log" >&2; return 1; }
    sleep 0.05
  done
  echo "member not healthy after 300 s" >&2
  return 1
}

rss_mib() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$PID/status"; }
# The backend file: its length / the blocks it takes / the bytes the
# server says are in use (Status dbSizeInUse), in MiB. A file grown in
# sparse steps is longer than what it takes.
db_mib() {
  local f="$1/member/snap/db" in_use
  in_use=$(ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$PORT" endpoint status -w json |
    jq '.[0].Status.dbSizeInUse // 0 | . / 1048576 | floor')
  printf '%s / %s / %s' "$(du -m --apparent-size "$f" | cut -f1)" "$(du -m "$f" | cut -f1)" "$in_use"
}

bench() { # ARGS...: one oxcd-bench run, its JSON summary
  "$BENCH" --endpoints "127.0.0.1:$PORT" --json --timeout 1800 "$@"
}

ROWS=()
for server in etcd oxcd; do
  case "$server" in etcd) bin="$ETCD_BIN" ;; oxcd) bin="$OXCD_BIN" ;; esac
  dir="$WORK/$server"
  sync
  start "$bin" "$dir"
  echo "$server: loading $KEYS keys" >&2
  load=$(bench --conns 100 --clients 1000 put --total "$KEYS" --key-size 8 --val-size 256 \
    --key-space-size "$KEYS" --sequential-keys)
  [ "$(jq -r .errors <<<"$load")" = 0 ] || { echo "$server: load errors: $load" >&2; exit 1; }
  rss_load=$(rss_mib)
  echo "$server: $READS random reads" >&2
  warm=$(bench --conns 10 --clients 100 range --total "$READS" --consistency l --key-space-size "$KEYS")
  rss_read=$(rss_mib)
  db=$(db_mib "$dir")
  stop
  sync
  echo "$server: restart" >&2
  t0=$(date +%s.%N)
  start "$bin" "$dir"
  t1=$(date +%s.%N)
  rss_restart=$(rss_mib)
  cold=$(bench --conns 10 --clients 100 range --total "$READS" --consistency l --key-space-size "$KEYS")
  rss_cold=$(rss_mib)
  stop
  ROWS+=("$(printf '| %s | %.0f | %s / %s | %s / %s | %.2f | %s / %s | %s | %s / %s / %s / %s |' \
    "$server" "$(jq -r .ops_per_sec <<<"$load")" \
    "$(jq -r .p50_ms <<<"$warm")" "$(jq -r .p99_ms <<<"$warm")" \
    "$(jq -r .ops_per_sec <<<"$warm" | cut -d. -f1)" "$(jq -r .errors <<<"$warm")" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
    "$(jq -r .p50_ms <<<"$cold")" "$(jq -r .p99_ms <<<"$cold")" \
    "$db" "$rss_load" "$rss_read" "$rss_restart" "$rss_cold")")
  rm -rf "$dir"
done

{
  echo "$KEYS keys of 256 B, one member, $READS linearizable random single-key reads (100 clients)"
  echo
  echo "| server | load puts/s | read p50 / p99 ms | reads/s / errors | restart s | cold read p50 / p99 ms | db MiB file / allocated / in use | RSS MiB after load / reads / restart / cold reads |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee ${OUT:+"$OUT"}

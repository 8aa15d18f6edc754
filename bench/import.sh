#!/usr/bin/env bash
# Booting on an etcd data directory, timed beside etcd's own restart on the
# same directory: real etcd (/usr/bin/etcd) writes N keys (default
# 1 000 000, 256-byte values) and is stopped; then, RUNS times each, from a
# fresh copy of that directory (copying not timed):
#   - etcd restarts on it,
#   - oxcd starts on it (the import, then its own start),
#   - oxcd restarts on the directory it imported (its own files);
# each timed from exec to the first healthy `etcdctl endpoint health`.
# Prints medians and ranges in seconds, and each start's peak RSS (VmHWM
# once healthy; for the import it includes the bbolt file, read whole into
# memory today).
#
# Usage: bench/import.sh [--keys N] [--runs R] [--no-build] [--out FILE]
# Environment: ETCD_BIN (default /usr/bin/etcd), OXCD_BIN (default
# target/release/oxcd).
#
# Only processes this script started are signalled, by their saved pid.
# All traffic goes to 127.0.0.1; the load has --timeout.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
OXCD_BIN="${OXCD_BIN:-$ROOT/target/release/oxcd}"
BENCH="$ROOT/target/release/oxcd-bench"
KEYS=1000000
RUNS=3
BUILD=1
OUT=""
PORT=25379
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ "$KEYS" =~ ^[1-9][0-9]*$ ]] || { echo "--keys must be a positive integer" >&2; exit 2; }
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "--runs must be a positive integer" >&2; exit 2; }
for tool in jq etcdctl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release -p oxcd -p oxcd-bench >&2)
fi

WORK="$(mktemp -d /tmp/oxcd-import.XXXXXX)"
START_POLLS=3000
# shellcheck source=bench/single.sh
. "$ROOT/bench/single.sh"

# timed_start BIN DIR: seconds from exec to healthy.
timed_start() {
  local t0 t1
  t0=$(date +%s.%N)
  start "$1" "$2"
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

# peak_rss_mib: the running server's peak RSS (VmHWM) in MiB.
peak_rss_mib() { awk '/VmHWM/ { printf "%.0f\n", $2 / 1024 }' "/proc/$PID/status"; }

# stats: "median (min–max)" of the numbers on stdin.
stats() {
  sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.2f (%.2f–%.2f)", m, v[1], v[NR] }'
}

SRC="$WORK/etcd-src"
start "$ETCD_BIN" "$SRC"
load "$KEYS" "$KEYS" 256
echo "etcd wrote $KEYS keys: $(du -sh "$SRC/member/snap/db" | cut -f1) backend" >&2
stop

: >"$WORK/etcd.t"
: >"$WORK/import.t"
: >"$WORK/restart.t"
: >"$WORK/rss"
: >"$WORK/etcd.rss"
: >"$WORK/restart.rss"
for run in $(seq 1 "$RUNS"); do
  d="$WORK/etcd-$run"
  cp -a "$SRC" "$d"
  timed_start "$ETCD_BIN" "$d" >>"$WORK/etcd.t"
  peak_rss_mib >>"$WORK/etcd.rss"
  stop
  rm -rf "$d"
  d="$WORK/oxcd-$run"
  cp -a "$SRC" "$d"
  timed_start "$OXCD_BIN" "$d" >>"$WORK/import.t"
  peak_rss_mib >>"$WORK/rss"
  [ "$(etcdctl --endpoints="$EP" get --prefix "" --limit 1 -w json | jq -r .count)" = "$KEYS" ] ||
    { echo "oxcd does not hold all $KEYS keys after the import" >&2; exit 1; }
  stop
  timed_start "$OXCD_BIN" "$d" >>"$WORK/restart.t"
  peak_rss_mib >>"$WORK/restart.rss"
  stop
  rm -rf "$d"
  echo "run $run done" >&2
done

table() {
  echo "| $KEYS keys, 256 B values ($RUNS runs; median (min–max)) | time to healthy, s | peak RSS, MiB |"
  echo "|---|---|---|"
  echo "| etcd 3.4 restarts on its data dir | $(stats <"$WORK/etcd.t") | $(stats <"$WORK/etcd.rss") |"
  echo "| oxcd imports that data dir and starts | $(stats <"$WORK/import.t") | $(stats <"$WORK/rss") |"
  echo "| oxcd restarts on what it imported | $(stats <"$WORK/restart.t") | $(stats <"$WORK/restart.rss") |"
}
table
[ -n "$OUT" ] && table >"$OUT"
exit 0

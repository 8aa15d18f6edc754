#!/usr/bin/env bash
# Backend file size, step by step, etcd (/usr/bin/etcd) beside oxcd: what a
# new user sees in `etcdctl endpoint status` (dbSize, the file's length),
# Status dbSizeInUse, and the blocks the file takes on disk (`du`), in MiB,
# after each step.
#
# Workload "overwrite": 1000 keys overwritten 200 times (100-byte values),
# then compact to the current revision, then defrag.
# Workload "bulk": N distinct keys (default 1 000 000, 256-byte values),
# then defrag.
#
# Usage: bench/disk.sh [--bulk-keys N] [--no-build] [--out FILE]
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
BULK=1000000
BUILD=1
OUT=""
PORT=23379
while [ $# -gt 0 ]; do
  case "$1" in
    --bulk-keys) BULK="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ "$BULK" =~ ^[1-9][0-9]*$ ]] || { echo "--bulk-keys must be a positive integer" >&2; exit 2; }
for tool in jq etcdctl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release -p oxcd -p oxcd-bench >&2)
fi

WORK="$(mktemp -d /tmp/oxcd-disk.XXXXXX)"
# shellcheck source=bench/single.sh
. "$ROOT/bench/single.sh"
# size DIR: "dbSize | dbSizeInUse | blocks on disk" in MiB
size() {
  local du
  du=$(du -k "$1/member/snap/db" | awk '{ print $1 }')
  etcdctl --endpoints="$EP" endpoint status -w json |
    jq -r '.[0].Status | "\(.dbSize / 1048576) \((.dbSizeInUse // 0) / 1048576)"' |
    awk -v du="$du" '{ printf "%.1f | %.1f | %.1f", $1, $2, du / 1024 }'
}

declare -A ROW
for kind in etcd oxcd; do
  bin="$ETCD_BIN"; [ "$kind" = oxcd ] && bin="$OXCD_BIN"
  d="$WORK/$kind-a"
  start "$bin" "$d"
  load 200000 1000 100
  ROW[$kind,ow]=$(size "$d")
  etcdctl --endpoints="$EP" --command-timeout=600s compact "$(rev)" --physical >/dev/null
  ROW[$kind,compact]=$(size "$d")
  etcdctl --endpoints="$EP" --command-timeout=600s defrag >/dev/null
  ROW[$kind,defrag]=$(size "$d")
  stop
  d="$WORK/$kind-b"
  start "$bin" "$d"
  load "$BULK" "$BULK" 256
  ROW[$kind,bulk]=$(size "$d")
  etcdctl --endpoints="$EP" --command-timeout=600s defrag >/dev/null
  ROW[$kind,bulkdefrag]=$(size "$d")
  stop
done

table() {
  echo "| step | etcd dbSize | etcd in use | etcd on disk | oxcd dbSize | oxcd in use | oxcd on disk |"
  echo "|---|---|---|---|---|---|---|"
  for s in "ow:1000 keys × 200 overwrites, 100 B values" "compact:then compact --physical" \
    "defrag:then defrag" "bulk:$BULK distinct keys, 256 B values" "bulkdefrag:then defrag"; do
    k="${s%%:*}"
    echo "| ${s#*:} | ${ROW[etcd,$k]} | ${ROW[oxcd,$k]} |"
  done
}
table
[ -n "$OUT" ] && table >"$OUT"
exit 0

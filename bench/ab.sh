#!/usr/bin/env bash
# A/B of two oxcd binaries on one workload, to see what a change costs:
# runs alternate between the binaries (A B A B …) so drift on the machine
# hits both alike, each on a fresh single member, all driven by the same
# oxcd-bench. Prints each run's throughput and the medians.
#
# Usage: bench/ab.sh OLD_BIN NEW_BIN [REPS] [-- BENCH ARGS…]
#   default workload: put, 1000 clients over 100 connections, 50k puts
#   of 256 bytes over 100k keys (compare.sh's put-1000clients row).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 REPS=${3:-3}
shift $(( $# >= 3 ? 3 : $# ))
[ "${1:-}" = "--" ] && shift
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(--conns 100 --clients 1000 put --total 50000 --key-size 8 --val-size 256 --key-space-size 100000)
BENCH=${BENCH:-target/release/oxcd-bench}
PORT=${PORT:-23990}
WORK=$(mktemp -d /tmp/oxcd-ab.XXXXXX)
# shellcheck source=bench/single.sh
. bench/single.sh

declare -A RESULTS
for rep in $(seq 1 "$REPS"); do
  for side in A B; do
    bin=$OLD; [ "$side" = B ] && bin=$NEW
    dir="$WORK/$side$rep"
    start "$bin" "$dir"
    rps=$(timeout 600 "$BENCH" --endpoints "$EP" --timeout 300 --json "${ARGS[@]}" | jq -r '.ops_per_sec')
    stop
    rm -rf "$dir"
    echo "$side run $rep: $rps req/s"
    RESULTS[$side]="${RESULTS[$side]:-} $rps"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
a=$(echo "${RESULTS[A]}" | median) b=$(echo "${RESULTS[B]}" | median)
echo "median A (old): $a req/s; median B (new): $b req/s; B/A: $(echo "scale=3; $b/$a" | bc)"

#!/usr/bin/env bash
# Side-by-side benchmark: the real etcd (/usr/bin/etcd) against oxcd, started
# with the same flags on 127.0.0.1, driven by the same oxcd-bench workloads.
#
# For each repetition the two servers take turns (the first one alternates
# between repetitions); each turn starts a fresh member in a fresh temp data
# dir, runs every workload in order, and stops it. Per workload the script
# records throughput and latency (from oxcd-bench --json) and the server's
# CPU time per operation (utime+stime from /proc/<pid>/stat, delta over the
# workload, divided by its successful ops); after the load phase it records
# the server's resident memory (VmRSS from /proc/<pid>/status). It prints
# the medians over the repetitions and the ratios oxcd/etcd.
# With --members 3, CPU time and RSS are summed over the three members.
#
# Usage: bench/compare.sh [--reps N] [--full] [--members 1|3] [--no-build]
#                         [--out FILE] [--keep]
#   --reps N      repetitions per server (default 3)
#   --full        etcd's documented sizes (100k requests per workload);
#                 the default sizes keep a run under ~10 minutes on 2 cores
#   --members 3   three-member clusters (oxcd: "needs replication" for now)
#   --no-build    use the existing target/release binaries
#   --out FILE    also write the table (markdown) to FILE
#   --keep        keep the temp dir (logs, raw results) for inspection
#
# Only processes this script started are signalled, by their saved pid.
# All traffic goes to 127.0.0.1; every bench run has --timeout and an
# outer `timeout`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
OXCD_BIN="$ROOT/target/release/oxcd"
BENCH="$ROOT/target/release/oxcd-bench"
REPS=3
FULL=0
MEMBERS=1
BUILD=1
OUT=""
KEEP=0
# Client ports: etcd 22379.., oxcd 22479..; peer ports are client + 50.
ETCD_BASE_PORT=22379
OXCD_BASE_PORT=22479
BENCH_TIMEOUT=300

while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --full) FULL=1; shift ;;
    --members) MEMBERS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$MEMBERS" in 1|3) ;; *) echo "--members must be 1 or 3" >&2; exit 2 ;; esac
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || { echo "--reps must be a positive integer" >&2; exit 2; }
for tool in jq curl awk; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
done
ETCDCTL="$(command -v etcdctl || true)"
[ -x "$ETCD_BIN" ] || { echo "no etcd at $ETCD_BIN (apt-get install etcd-server)" >&2; exit 1; }
[ -n "$ETCDCTL" ] || { echo "needs etcdctl (apt-get install etcd-client)" >&2; exit 1; }

# The servers read only our flags.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^ETCD_' || true)

if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && flock /tmp/oxcd-cargo.lock cargo build --release -p oxcd -p oxcd-bench)
fi
[ -x "$OXCD_BIN" ] && [ -x "$BENCH" ] || { echo "missing release binaries; run without --no-build" >&2; exit 1; }

WORK="$(mktemp -d /tmp/oxcd-compare.XXXXXX)"
RESULTS="$WORK/results.tsv"
: > "$RESULTS"
PIDS=()
CLK_TCK="$(getconf CLK_TCK)"

stop_servers() {
  local pid
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
cleanup() {
  stop_servers
  if [ "$KEEP" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Workload sizes: default (quick) and --full (etcd's documented sizes).
if [ "$FULL" = 1 ]; then
  PUT1=10000 PUTN=100000 RANGEN=100000 TXNN=100000 WLAT=10000 LKA=100000
else
  PUT1=5000 PUTN=50000 RANGEN=50000 TXNN=20000 WLAT=1000 LKA=50000
fi
MANY="--conns 100 --clients 1000"
# name|bench arguments. Keys: 8 bytes; values: 256 bytes; `foo` is written
# by etcdctl before the range workloads.
WORKLOADS=(
  "put-1client|--conns 1 --clients 1 put --total $PUT1 --key-size 8 --val-size 256 --sequential-keys"
  "put-1000clients|$MANY put --total $PUTN --key-size 8 --val-size 256 --key-space-size 100000"
  "range-linearizable|$MANY range foo --consistency l --total $RANGEN"
  "range-serializable|$MANY range foo --consistency s --total $RANGEN"
  "txn-put|$MANY txn-put --total $TXNN --txn-ops 4 --key-size 8 --val-size 256 --key-space-size 100000"
  "watch-latency|--conns 10 --clients 10 watch-latency --total $WLAT --put-rate 200 --watchers 100 --streams 10"
  "lease-keepalive|--conns 10 --clients 100 lease-keepalive --total $LKA"
)
LOAD_DONE_AFTER="put-1000clients"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_servers KIND DIR: starts $MEMBERS members; sets PIDS and ENDPOINTS.
start_servers() {
  local kind="$1" dir="$2" bin base i cluster="" names=()
  case "$kind" in etcd) bin="$ETCD_BIN"; base=$ETCD_BASE_PORT ;; oxcd) bin="$OXCD_BIN"; base=$OXCD_BASE_PORT ;; esac
  ENDPOINTS=""
  for ((i = 0; i < MEMBERS; i++)); do
    names+=("m$i")
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 50 + i))"
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((base + i))"
    port_free $((base + i)) && port_free $((base + 50 + i)) ||
      { echo "port $((base + i)) or $((base + 50 + i)) is in use" >&2; exit 1; }
  done
  for ((i = 0; i < MEMBERS; i++)); do
    local c="http://127.0.0.1:$((base + i))" p="http://127.0.0.1:$((base + 50 + i))"
    "$bin" --name "m$i" --data-dir "$dir/m$i.etcd" \
      --listen-client-urls "$c" --advertise-client-urls "$c" \
      --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "bench-$kind" \
      >"$dir/m$i.log" 2>&1 </dev/null &
    PIDS+=("$!")
  done
  for ((i = 0; i < MEMBERS; i++)); do
    local ok=0
    for _ in $(seq 300); do
      kill -0 "${PIDS[$i]}" 2>/dev/null || break
      if curl -sf "http://127.0.0.1:$((base + i))/health" | grep -q '"health": *"true"'; then ok=1; break; fi
      sleep 0.1
    done
    [ "$ok" = 1 ] || { echo "$kind member m$i did not become ready; log:" >&2; tail -20 "$dir/m$i.log" >&2; exit 1; }
  done
}

cpu_ticks() { # sum of utime+stime over PIDS
  local pid total=0 t
  for pid in "${PIDS[@]}"; do
    t=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')
    total=$((total + t))
  done
  echo "$total"
}
rss_kib() { # sum of VmRSS over PIDS
  local pid total=0 r
  for pid in "${PIDS[@]}"; do
    r=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    total=$((total + r))
  done
  echo "$total"
}

# run_turn KIND REP: one fresh server, every workload. Appends rows
#   kind rep workload status ops_per_sec p50 p99 p999 max errors cpu_us_per_op
# and "kind rep rss-after-load - KiB".
run_turn() {
  local kind="$1" rep="$2" dir="$WORK/$1-$2" entry name args before after line rc ok
  mkdir -p "$dir"
  if [ "$kind" = oxcd ] && [ "$MEMBERS" -gt 1 ]; then
    for entry in "${WORKLOADS[@]}"; do
      printf '%s\t%s\t%s\tneeds-replication\n' "$kind" "$rep" "${entry%%|*}" >>"$RESULTS"
    done
    return
  fi
  start_servers "$kind" "$dir"
  local target=""
  [ "$MEMBERS" -gt 1 ] && target="--target-leader"
  for entry in "${WORKLOADS[@]}"; do
    name="${entry%%|*}" args="${entry#*|}"
    if [[ "$name" == range-* ]]; then
      ETCDCTL_API=3 "$ETCDCTL" --endpoints "$ENDPOINTS" put foo "$(head -c 256 /dev/zero | tr '\0' v)" >/dev/null
    fi
    echo "  $kind rep $rep: $name" >&2
    before=$(cpu_ticks)
    rc=0
    # shellcheck disable=SC2086 # args is a word list on purpose
    line=$(timeout $((BENCH_TIMEOUT + 60)) "$BENCH" --endpoints "$ENDPOINTS" $target --json \
      --timeout "$BENCH_TIMEOUT" $args 2>>"$dir/bench.err" | tail -1) || rc=$?
    after=$(cpu_ticks)
    if [ "$rc" = 3 ]; then
      printf '%s\t%s\t%s\tunimplemented\n' "$kind" "$rep" "$name" >>"$RESULTS"
      continue
    fi
    if [ "$rc" != 0 ] || [ -z "$line" ]; then
      echo "    failed (exit $rc), see $dir/bench.err" >&2
      printf '%s\t%s\t%s\tfailed\n' "$kind" "$rep" "$name" >>"$RESULTS"
      continue
    fi
    ok=$(jq -r '.ok' <<<"$line")
    jq -r --arg k "$kind" --arg r "$rep" --arg n "$name" \
      --argjson cpu "$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v ok="$ok" \
        'BEGIN { printf "%.3f", (ok > 0 ? d / hz * 1e6 / ok : 0) }')" \
      '[$k, $r, $n, "ok", .ops_per_sec, .p50_ms, .p99_ms, .p999_ms, .max_ms, .errors, $cpu] | @tsv' \
      <<<"$line" >>"$RESULTS"
    if [ "$name" = "$LOAD_DONE_AFTER" ]; then
      printf '%s\t%s\trss-after-load\tok\t%s\n' "$kind" "$rep" "$(rss_kib)" >>"$RESULTS"
    fi
  done
  stop_servers
}

echo "results in $WORK (reps=$REPS, members=$MEMBERS, full=$FULL)" >&2
for ((rep = 1; rep <= REPS; rep++)); do
  if ((rep % 2)); then order=(etcd oxcd); else order=(oxcd etcd); fi
  for kind in "${order[@]}"; do run_turn "$kind" "$rep"; done
done

# median KIND WORKLOAD COLUMN: median over reps of an "ok" row's column,
# or the row status (n/a reasons) when no rep measured it.
median() {
  awk -F'\t' -v k="$1" -v w="$2" -v c="$3" '
    $1 == k && $3 == w { if ($4 == "ok") v[n++] = $c; else why = $4 }
    END {
      if (n == 0) { print (why == "" ? "n/a" : why == "unimplemented" ? "n/a" : why); exit }
      for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      m = (n % 2) ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2
      if (m >= 1000) printf "%.0f\n", m; else printf "%.4g\n", m
    }' "$RESULTS"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.e+-]+$/ && b ~ /^[0-9.e+-]+$/ && b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'; }

{
  echo "| workload | etcd ops/s | oxcd ops/s | ratio | etcd p50 ms | oxcd p50 ms | ratio | etcd p99 ms | oxcd p99 ms | ratio | etcd CPU µs/op | oxcd CPU µs/op | ratio | errors etcd/oxcd |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for entry in "${WORKLOADS[@]}"; do
    name="${entry%%|*}"
    row="| $name"
    for col in 5 6 7 11; do
      e=$(median etcd "$name" "$col") o=$(median oxcd "$name" "$col")
      row+=" | $e | $o | $(ratio "$o" "$e")"
    done
    row+=" | $(median etcd "$name" 10)/$(median oxcd "$name" 10) |"
    echo "$row"
  done
  e=$(median etcd rss-after-load 5) o=$(median oxcd rss-after-load 5)
  echo
  echo "| memory | etcd | oxcd | ratio |"
  echo "|---|---|---|---|"
  echo "| RSS after $LOAD_DONE_AFTER (MiB) | $(awk -v v="$e" 'BEGIN { if (v ~ /^[0-9.e+]+$/) printf "%.1f", v / 1024; else print v }') | $(awk -v v="$o" 'BEGIN { if (v ~ /^[0-9.e+]+$/) printf "%.1f", v / 1024; else print v }') | $(ratio "$o" "$e") |"
  echo
  echo "Medians of $REPS repetition(s), $MEMBERS member(s). ratio = oxcd/etcd: above 1 is better for ops/s, below 1 is better for latency, CPU and memory. n/a: the server answers Unimplemented."
} | tee "${OUT:-/dev/null}"

#!/usr/bin/env bash
# Watch coalescing through the L7 gRPC proxy: 10 000 watchers on 100 keys
# through one proxy in front of a 3-member cluster, oxcd against etcd 3.4.
#   oxcd: 3 oxcd members + `oxcd grpc-proxy start`
#   etcd: 3 /usr/bin/etcd members + `/usr/bin/etcd grpc-proxy start`
# Both proxies get --endpoints=<the 3 client URLs> --listen-addr=127.0.0.1:PORT
# (and a --data-dir in the temp dir); the script waits for the proxy's
# stderr line `started gRPC proxy`.
#
# Each run, the two systems take turns (oxcd first in odd runs, etcd first
# in even ones), each on fresh members in fresh temp dirs, with two clients
# one after the other, each through a freshly started proxy:
#   1. oxcd-bench: `watch --streams 100 --watch-per-stream 100
#      --watched-key-total 100 --put-total PUTS --put-rate RATE` over 10
#      connections to the proxy, the puts from PUT_CLIENTS clients through
#      the proxy too. events/s is events received over the time from the
#      first put until the last expected event arrived (or 10 s of grace
#      after the last put ran out); events expected = sum over acknowledged
#      puts of the watchers on the put key.
#   2. the third-party `etcd-client` crate
#      (crates/oxcd-bench/examples/etcd_client_watch.rs): W2 watchers on
#      100 keys, 100 per stream (each stream watches every key once, as
#      oxcd-bench lays them out), 10 streams per connection to the proxy,
#      then P2 unpaced puts from 10 tasks sent straight to the leader, not
#      through the proxy; events/s is events received over the time from
#      the first put to the last event received.
# While each client runs, a background loop reads every member's /metrics
# every 0.2 s and keeps the largest sum of `etcd_debugging_mvcc_watcher_total`
# over the 3 members: the watches the cluster sees. The sum is also read
# one second after the proxy started, before the client (the proxy's own
# watches: etcd's watches a key to notice a lost leader), and 2 s after the
# client exits (watches the proxy did not cancel). The
# proxy's peak RSS is VmHWM of its /proc status after the client, its CPU
# (and the members' summed) is utime+stime over the client's run.
#
# Prints, per system and client, the median over the runs and the min–max
# spread, and the ratio oxcd/etcd of the medians; lost events, events on the
# wrong watch, more upstream watches than keys, client errors, or a proxy
# that exited are listed as anomalies.
#
# Usage: bench/grpc-proxy.sh [--runs R] [--puts P] [--put-rate N]
#                            [--put-clients C] [--second-watchers W2]
#                            [--second-puts P2] [--no-build] [--out FILE]
#                            [--keep]
#   --runs R          runs (default 3)
#   --puts P          oxcd-bench puts (default 15000)
#   --put-rate N      oxcd-bench puts per second (default 0: unpaced)
#   --put-clients C   oxcd-bench put clients (default 10)
#   --second-watchers W2  etcd-client watchers (default 10000)
#   --second-puts P2  etcd-client puts (default 15000)
#   --no-build        use the existing target/release binaries
#   --out FILE        also write the tables (markdown) to FILE
#   --keep            keep the temp dir (logs, raw results)
# Environment: ETCD_BIN (default /usr/bin/etcd), OXCD_BIN (default
# target/release/oxcd).
#
# Only processes this script started are signalled, by their saved pid.
# All traffic goes to 127.0.0.1; every client run has an outer `timeout`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
OXCD_BIN="${OXCD_BIN:-$ROOT/target/release/oxcd}"
BENCH="$ROOT/target/release/oxcd-bench"
SECOND="$ROOT/target/release/examples/etcd_client_watch"
RUNS=3
PUTS=15000
RATE=0
PUT_CLIENTS=10
W2=10000
P2=15000
BUILD=1
OUT=""
KEEP=0
# Client ports: oxcd 26379.., etcd 26479..; peer ports are client + 50;
# the proxy listens on base + 11.
OXCD_BASE_PORT=26379
ETCD_BASE_PORT=26479
STREAMS=100 PER_STREAM=100 KEYS=100
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --puts) PUTS="$2"; shift 2 ;;
    --put-rate) RATE="$2"; shift 2 ;;
    --put-clients) PUT_CLIENTS="$2"; shift 2 ;;
    --second-watchers) W2="$2"; shift 2 ;;
    --second-puts) P2="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
for n in "$RUNS" "$PUTS" "$PUT_CLIENTS" "$W2" "$P2"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "--runs, --puts, --put-clients, --second-watchers and --second-puts take positive integers" >&2; exit 2; }
done
[[ "$RATE" =~ ^[0-9]+$ ]] || { echo "--put-rate takes a non-negative integer" >&2; exit 2; }
for tool in jq curl awk etcdctl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
ETCDCTL="$(command -v etcdctl)"
[ -x "$ETCD_BIN" ] || { echo "no etcd at $ETCD_BIN (apt-get install etcd-server)" >&2; exit 1; }

# The servers and proxies read only our flags.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^ETCD_' || true)

if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && flock /tmp/oxcd-cargo.lock cargo build --release -p oxcd -p oxcd-bench \
    --bin oxcd --bin oxcd-bench --example etcd_client_watch >&2)
fi
for b in "$OXCD_BIN" "$BENCH" "$SECOND"; do
  [ -x "$b" ] || { echo "missing $b; run without --no-build" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/oxcd-grpc-proxy.XXXXXX)"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
ANOMALIES="$WORK/anomalies.txt"
: >"$ANOMALIES"
PIDS=()
PROXY_PID=""
SAMPLER_PID=""
CLK_TCK="$(getconf CLK_TCK)"

# stop_pid PID: SIGTERM, SIGKILL after 10 s.
stop_pid() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
stop_sampler() { [ -z "$SAMPLER_PID" ] || stop_pid "$SAMPLER_PID"; SAMPLER_PID=""; }
stop_proxy() { [ -z "$PROXY_PID" ] || stop_pid "$PROXY_PID"; PROXY_PID=""; }
stop_servers() {
  local pid
  for pid in "${PIDS[@]:-}"; do [ -z "$pid" ] || stop_pid "$pid"; done
  PIDS=()
}
cleanup() {
  stop_sampler
  stop_proxy
  stop_servers
  if [ "$KEEP" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_servers KIND DIR: 3 fresh members; sets PIDS, ENDPOINTS, LEADER_EP.
start_servers() {
  local kind="$1" dir="$2" bin base i cluster=""
  case "$kind" in etcd) bin="$ETCD_BIN"; base=$ETCD_BASE_PORT ;; oxcd) bin="$OXCD_BIN"; base=$OXCD_BASE_PORT ;; esac
  ENDPOINTS=""
  for ((i = 0; i < 3; i++)); do
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 50 + i))"
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$((base + i))"
    if ! port_free $((base + i)) || ! port_free $((base + 50 + i)); then
      echo "port $((base + i)) or $((base + 50 + i)) is in use" >&2; exit 1
    fi
  done
  for ((i = 0; i < 3; i++)); do
    local c="http://127.0.0.1:$((base + i))" p="http://127.0.0.1:$((base + 50 + i))"
    "$bin" --name "m$i" --data-dir "$dir/m$i.etcd" \
      --listen-client-urls "$c" --advertise-client-urls "$c" \
      --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "bench-proxy-$kind" \
      >"$dir/m$i.log" 2>&1 </dev/null &
    PIDS+=("$!")
  done
  for ((i = 0; i < 3; i++)); do
    local ok=0
    for _ in $(seq 300); do
      kill -0 "${PIDS[$i]}" 2>/dev/null || break
      if curl -sf "http://127.0.0.1:$((base + i))/health" | grep -q '"health": *"true"'; then ok=1; break; fi
      sleep 0.1
    done
    [ "$ok" = 1 ] || { echo "$kind member m$i did not become ready; log:" >&2; tail -20 "$dir/m$i.log" >&2; exit 1; }
  done
  wait_leader "$kind" "$dir"
}

# member_status ENDPOINT: "member_id leader" from Maintenance/Status, as
# decimal strings (jq 1.6 would round 64-bit ids), or nothing.
member_status() {
  local json
  json=$(ETCDCTL_API=3 timeout 5 "$ETCDCTL" --endpoints "$1" --dial-timeout 1s --command-timeout 2s \
    endpoint status -w json 2>/dev/null) || return 0
  printf '%s %s\n' "$(grep -o '"member_id":[0-9]*' <<<"$json" | head -1 | cut -d: -f2)" \
    "$(grep -o '"leader":[0-9]*' <<<"$json" | head -1 | cut -d: -f2)"
}

# wait_leader KIND DIR: until every member names the same leader, that
# leader is one of them, and a linearizable read through each member
# succeeds. At most 30 s. Sets LEADER (id) and LEADER_EP.
wait_leader() {
  local kind="$1" dir="$2" ep st ids leader agreed eps lep
  IFS=, read -ra eps <<<"$ENDPOINTS"
  for _ in $(seq 60); do
    ids=" " leader="" agreed=1 lep=""
    for ep in "${eps[@]}"; do
      st=$(member_status "$ep")
      if [ -z "${st#* }" ] || [ "${st#* }" = 0 ]; then agreed=0; break; fi
      ids+="${st% *} "
      [ "${st% *}" = "${st#* }" ] && lep="$ep"
      if [ -z "$leader" ]; then leader="${st#* }"; elif [ "$leader" != "${st#* }" ]; then agreed=0; break; fi
    done
    if [ "$agreed" = 1 ] && [ -n "$lep" ] && [[ "$ids" == *" $leader "* ]]; then
      for ep in "${eps[@]}"; do
        ETCDCTL_API=3 timeout 5 "$ETCDCTL" --endpoints "$ep" --dial-timeout 1s --command-timeout 3s \
          get --consistency=l bench-probe >/dev/null 2>&1 || { agreed=0; break; }
      done
      [ "$agreed" = 1 ] && { LEADER="$leader"; LEADER_EP="$lep"; return 0; }
    fi
    sleep 0.5
  done
  echo "$kind: the 3 members did not agree on a leader within 30 s; logs in $dir" >&2
  for ((i = 0; i < 3; i++)); do tail -5 "$dir/m$i.log" >&2; done
  KEEP=1
  exit 1
}

# start_proxy KIND LOG: the proxy in front of ENDPOINTS; sets PROXY_PID
# and PROXY_EP once it logged `started gRPC proxy` (at most 10 s).
start_proxy() {
  local kind="$1" log="$2" bin base
  case "$kind" in etcd) bin="$ETCD_BIN"; base=$ETCD_BASE_PORT ;; oxcd) bin="$OXCD_BIN"; base=$OXCD_BASE_PORT ;; esac
  PROXY_EP="127.0.0.1:$((base + 11))"
  port_free $((base + 11)) || { echo "port $((base + 11)) is in use" >&2; exit 1; }
  "$bin" grpc-proxy start --endpoints="$ENDPOINTS" --listen-addr="$PROXY_EP" \
    --data-dir="$log.data" >"$log" 2>&1 </dev/null &
  PROXY_PID=$!
  for _ in $(seq 200); do
    grep -qs "started gRPC proxy" "$log" && return 0
    kill -0 "$PROXY_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "$kind grpc-proxy did not start; log:" >&2
  tail -20 "$log" >&2
  KEEP=1
  exit 1
}

# watcher_sum: etcd_debugging_mvcc_watcher_total summed over the members
# (a member that does not answer counts as "?" and makes the sum "?").
watcher_sum() {
  local ep v s=0 eps
  IFS=, read -ra eps <<<"$ENDPOINTS"
  for ep in "${eps[@]}"; do
    v=$(curl -s --max-time 1 "http://$ep/metrics" | awk '$1 == "etcd_debugging_mvcc_watcher_total" { printf "%.0f", $2 }')
    [ -n "$v" ] || { echo "?"; return 0; }
    s=$((s + v))
  done
  echo "$s"
}

# start_sampler FILE: watcher_sum every 0.2 s, one line each, into FILE.
start_sampler() {
  local file="$1"
  : >"$file"
  ( while :; do watcher_sum >>"$file"; sleep 0.2; done ) &
  SAMPLER_PID=$!
}

ticks() { { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null || echo; } | awk '{ print $12 + $13 }'; }
member_ticks() {
  local pid t=0
  for pid in "${PIDS[@]}"; do t=$((t + $(ticks "$pid"))); done
  echo "$t"
}
secs() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }'; }

# measure KIND RUN CLIENT DIR: a fresh proxy, one client through it, the
# samples; appends one row to RESULTS:
#   kind run client events_per_sec received expected max_upstream
#   after_upstream proxy_hwm_mib proxy_cpu_s members_cpu_s put_p99_ms
#   put_errors wrong_events idle_upstream
measure() {
  local kind="$1" run="$2" client="$3" dir="$4" line rc=0 p0 m0 p1 m1 hwm max after idle
  start_proxy "$kind" "$dir/proxy-$client.log"
  echo "  $kind run $run: $client through $PROXY_EP" >&2
  sleep 1
  idle=$(watcher_sum)
  start_sampler "$dir/samples-$client"
  p0=$(ticks "$PROXY_PID") m0=$(member_ticks)
  if [ "$client" = oxcd-bench ]; then
    line=$(timeout 240 "$BENCH" --endpoints "$PROXY_EP" --conns 10 --clients "$PUT_CLIENTS" --timeout 180 --json \
      watch --streams "$STREAMS" --watch-per-stream "$PER_STREAM" --watched-key-total "$KEYS" \
      --put-total "$PUTS" --put-rate "$RATE" 2>"$dir/$client.err" | tail -1) || rc=$?
  else
    line=$(timeout 240 "$SECOND" "$PROXY_EP" "$LEADER_EP" "$W2" "$(( (W2 + 99) / 100 ))" "$KEYS" "$P2" \
      2>"$dir/$client.err" | tail -1) || rc=$?
  fi
  if kill -0 "$PROXY_PID" 2>/dev/null; then
    p1=$(ticks "$PROXY_PID")
    hwm=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$PROXY_PID/status")
  else
    echo "$kind run $run $client: the proxy exited during the run; log tail:" >>"$ANOMALIES"
    tail -20 "$dir/proxy-$client.log" >>"$ANOMALIES"
    p1=$p0 hwm="?"
  fi
  m1=$(member_ticks)
  stop_sampler
  max=$(awk '$1 != "?" && $1 > m { m = $1 } END { print m + 0 }' "$dir/samples-$client")
  grep -q '?' "$dir/samples-$client" &&
    echo "$kind run $run $client: $(grep -c '?' "$dir/samples-$client") /metrics samples failed" >>"$ANOMALIES"
  sleep 2
  after=$(watcher_sum)
  stop_proxy
  if [ "$rc" != 0 ] || [ -z "$line" ]; then
    echo "$kind run $run $client: client failed (exit $rc); stderr tail:" >>"$ANOMALIES"
    tail -5 "$dir/$client.err" >>"$ANOMALIES"
    printf '%s\t%s\t%s\tfailed\n' "$kind" "$run" "$client" >>"$RESULTS"
    return 0
  fi
  [ "$client" = oxcd-bench ] && line=$(jq -c '.extra + {errors: .errors}' <<<"$line")
  echo "$line" >>"$dir/client.json"
  jq -r --arg k "$kind" --arg r "$run" --arg c "$client" --arg max "$max" --arg after "$after" --arg idle "$idle" \
    --arg hwm "$hwm" --arg pcpu "$(secs $((p1 - p0)))" --arg mcpu "$(secs $((m1 - m0)))" \
    '[$k, $r, $c, (.events_per_sec | floor), .events_received, .events_expected, $max, $after,
      $hwm, $pcpu, $mcpu, .put_p99_ms, (.put_errors + (.errors // 0) + (.stream_errors // 0)
      + ((.watchers // 0) - (.watchers_created // .watchers // 0))), (.wrong_events // 0), $idle] | @tsv' \
    <<<"$line" >>"$RESULTS"
  jq -r --arg k "$kind" --arg r "$run" --arg c "$client" --arg keys "$KEYS" --argjson max "$max" '
    [ (if .events_received < .events_expected
        then "\($k) run \($r) \($c): \(.events_expected - .events_received) of \(.events_expected) events not received" else empty end),
      (if .events_received > .events_expected
        then "\($k) run \($r) \($c): \(.events_received - .events_expected) events more than expected" else empty end),
      (if (.wrong_events // 0) > 0 then "\($k) run \($r) \($c): \(.wrong_events) events on the wrong watch" else empty end),
      (if (.put_errors + (.errors // 0) + (.stream_errors // 0)) > 0
        then "\($k) run \($r) \($c): errors: \(del(.events_per_sec))" else empty end),
      (if (.watchers // 0) > (.watchers_created // .watchers // 0)
        then "\($k) run \($r) \($c): \(.watchers_created) of \(.watchers) watchers created" else empty end),
      (if $max > ($keys | tonumber) then "\($k) run \($r) \($c): \($max) upstream watches (> \($keys) keys)" else empty end)
    ] | .[]' <<<"$line" >>"$ANOMALIES"
  if [ "$(jq '.put_errors + (.errors // 0) + (.stream_errors // 0)' <<<"$line")" != 0 ]; then
    echo "  client stderr (last 5 lines):" >>"$ANOMALIES"
    grep -v '^\s*$' "$dir/$client.err" | tail -5 | sed 's/^/    /' >>"$ANOMALIES" || true
  fi
  [ "$after" = "$idle" ] ||
    echo "$kind run $run $client: $after upstream watches 2 s after the client exited, $idle before it started" >>"$ANOMALIES"
}

# run_turn KIND RUN: fresh members, both clients, members stopped.
run_turn() {
  local kind="$1" run="$2" dir="$WORK/$1-$2"
  mkdir -p "$dir"
  start_servers "$kind" "$dir"
  measure "$kind" "$run" oxcd-bench "$dir"
  measure "$kind" "$run" etcd-client "$dir"
  local now
  now=$(member_status "${ENDPOINTS%%,*}")
  [ "${now#* }" = "$LEADER" ] ||
    echo "$kind run $run: the leader changed during the turn ($LEADER -> ${now#* })" >>"$ANOMALIES"
  stop_servers
}

echo "results in $WORK (runs=$RUNS; oxcd-bench: $((STREAMS * PER_STREAM)) watchers, $PUTS puts at rate $RATE from $PUT_CLIENTS clients; etcd-client: $W2 watchers, $P2 puts)" >&2
for ((run = 1; run <= RUNS; run++)); do
  if ((run % 2)); then order=(oxcd etcd); else order=(etcd oxcd); fi
  for kind in "${order[@]}"; do run_turn "$kind" "$run"; done
done

# stat KIND CLIENT COLUMN: "median (min–max)" over the runs, or the median
# alone with one run, or n/a.
stat() {
  awk -F'\t' -v k="$1" -v c="$2" -v col="$3" '
    function f(x) { return (x >= 1000 || x == int(x)) ? sprintf("%.0f", x) : sprintf("%.3g", x) }
    $1 == k && $3 == c && $4 != "failed" && $col != "?" { v[n++] = $col + 0 }
    END {
      if (n == 0) { print "n/a"; exit }
      for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      m = (n % 2) ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2
      printf "%s", f(m); if (n > 1) printf " (%s–%s)", f(v[0]), f(v[n - 1]); print ""
    }' "$RESULTS"
}
# per_run KIND CLIENT COLUMN: the values of every run, comma separated.
per_run() { awk -F'\t' -v k="$1" -v c="$2" -v col="$3" '$1 == k && $3 == c { printf "%s%s", (n++ ? ", " : ""), ($4 == "failed" ? "failed" : $col) } END { print "" }' "$RESULTS"; }
ratio() { awk -v a="${1%% *}" -v b="${2%% *}" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'; }

{
  for client in oxcd-bench etcd-client; do
    if [ "$client" = oxcd-bench ]; then
      echo "| oxcd-bench: $((STREAMS * PER_STREAM)) watchers on $KEYS keys, $PUTS puts ($([ "$RATE" = 0 ] && echo unpaced || echo "at $RATE/s"), $PUT_CLIENTS clients) through the proxy ($RUNS runs; median (min–max)) | oxcd | etcd 3.4 | oxcd/etcd |"
    else
      echo "| etcd-client: $W2 watchers on $KEYS keys, $P2 unpaced puts to the leader ($RUNS runs; median (min–max)) | oxcd | etcd 3.4 | oxcd/etcd |"
    fi
    echo "|---|---|---|---|"
    for row in "events/s|4" "events received (per run)|5|runs" "events expected (per run)|6|runs" \
      "upstream watches with the proxy idle, before the client (per run)|15|runs" \
      "max upstream watches while the client ran (sum over 3 members)|7" \
      "upstream watches 2 s after the client left (per run)|8|runs" \
      "proxy peak RSS, MiB|9" "proxy CPU, s|10" "members' CPU, s|11" "put p99, ms|12" \
      "client errors (per run)|13|runs" "events on the wrong watch (per run)|14|runs"; do
      IFS='|' read -r name col how <<<"$row"
      if [ "${how:-}" = runs ]; then
        echo "| $name | $(per_run oxcd "$client" "$col") | $(per_run etcd "$client" "$col") | |"
      else
        o=$(stat oxcd "$client" "$col") e=$(stat etcd "$client" "$col")
        echo "| $name | $o | $e | $(ratio "$o" "$e") |"
      fi
    done
    echo
  done
  if [ -s "$ANOMALIES" ]; then
    echo "Anomalies:"
    echo
    echo '```'
    cat "$ANOMALIES"
    echo '```'
  else
    echo "No anomalies: every expected event arrived, no events on the wrong watch, no client errors, at most $KEYS upstream watches, as many after the clients as before them, the proxies and leaders stayed up."
  fi
} | tee "${OUT:-/dev/null}"

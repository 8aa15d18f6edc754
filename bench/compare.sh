#!/usr/bin/env bash
# Side-by-side benchmark: the real etcd (/usr/bin/etcd) against oxcd, started
# with the same flags on 127.0.0.1, driven by the same oxcd-bench workloads.
#
# For each repetition the two servers take turns (the first one alternates
# between repetitions); each turn starts fresh members in fresh temp data
# dirs, runs every workload in order, and stops them. Per workload the script
# records throughput and latency (from oxcd-bench --json) and the server's
# CPU time per operation (utime+stime from /proc/<pid>/stat, delta over the
# workload, divided by its successful ops); after the put workloads it
# records the server's resident memory (VmRSS from /proc/<pid>/status). It prints
# the medians over the repetitions and the ratios oxcd/etcd.
# With --members 3 both servers run as real 3-member clusters (the same
# --initial-cluster flags), the script waits until the members agree on a
# leader, every workload runs with --target-leader (oxcd-bench sends all
# traffic to the member whose Maintenance/Status says it leads), and CPU
# time and RSS are summed over the three members. A leader change during a
# turn is reported on stderr (its numbers include an election).
#
# With --spread (3 members) the clients are spread over all members
# instead (connection i dials member i % 3, as etcd's benchmark does
# without --target-leader), so followers forward two thirds of the writes.
#
# Usage: bench/compare.sh [--reps N] [--full|--smoke] [--members 1|3]
#                         [--spread] [--tls] [--auth simple|jwt] [--only REGEX]
#                         [--no-build] [--out FILE] [--keep]
#   --reps N      repetitions per server (default 3)
#   --full        etcd's documented sizes (100k requests per workload);
#                 the default sizes keep a run under ~10 minutes on 2 cores
#   --smoke       tiny sizes, to check the script and the servers, not to
#                 measure anything
#   --members 3   three-member clusters of each server
#   --spread      with --members 3: traffic to every member, not the leader
#   --no-build    use the existing target/release binaries
#   --out FILE    also write the table (markdown) to FILE
#   --keep        keep the temp dir (logs, raw results) for inspection
#   --auth simple|jwt  the auth cost: put and range at 1000 clients, first
#                 with auth off, then (on fresh members) with auth on as a
#                 plain user holding a readwrite role on every key, with
#                 simple tokens or RS256 JWTs (etcd's test key pair);
#                 rows named *-auth; no restart measurement
#   --tls         the cost of TLS: clients speak https with a client
#                 certificate to members run with --client-cert-auth
#                 (etcd's test certificates, RSA 2048, from
#                 golang-etcd-server-dev); rows put and range at 1000
#                 clients, and connect-tls: 1000 new connections per
#                 second (TCP, TLS, HTTP/2, one read each); peers stay
#                 plaintext; no restart measurement and no memory table
#   --large       large and wide requests: 10 000 keys filled, then
#                 range returning all of them, txns of 128 puts, puts of
#                 64 KiB and of 1 MiB values (RSS after each), and put
#                 latency at 1000/s while a physical compaction of 1M
#                 revisions runs (idle p99 beside it); no restart
#                 measurement
#   --only REGEX  only the workloads whose name matches REGEX (bash =~);
#                 no restart measurement and no memory table
#   --restart-keys N  keys loaded before the restart measurement (default
#                 250000; 1000000 with --full, as etcd's docs size it)
# Environment: ETCD_BIN (default /usr/bin/etcd), OXCD_BIN (default
# target/release/oxcd).
#
# Only processes this script started are signalled, by their saved pid.
# All traffic goes to 127.0.0.1; every bench run has --timeout and an
# outer `timeout`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/auth-setup.sh
. "$ROOT/bench/auth-setup.sh"
# Not named ETCD_*: those are unset below, so the servers never see them.
ETCD_EXE="${ETCD_BIN:-/usr/bin/etcd}"
OXCD_BIN="${OXCD_BIN:-$ROOT/target/release/oxcd}"
BENCH="$ROOT/target/release/oxcd-bench"
REPS=3
SIZES=default
MEMBERS=1
SPREAD=0
BUILD=1
OUT=""
KEEP=0
RESTARTN_ARG=""
AUTH=""
TLS=0
LARGE=0
ONLY=""
# Client ports: etcd 22379.., oxcd 22479..; peer ports are client + 50.
ETCD_BASE_PORT=22379
OXCD_BASE_PORT=22479
BENCH_TIMEOUT=300

while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --full) SIZES=full; shift ;;
    --smoke) SIZES=smoke; shift ;;
    --members) MEMBERS="$2"; shift 2 ;;
    --spread) SPREAD=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --restart-keys) RESTARTN_ARG="$2"; shift 2 ;;
    --auth) AUTH="$2"; shift 2 ;;
    --tls) TLS=1; shift ;;
    --large) LARGE=1; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$MEMBERS" in 1|3) ;; *) echo "--members must be 1 or 3" >&2; exit 2 ;; esac
case "$AUTH" in ""|simple|jwt) ;; *) echo "--auth must be simple or jwt" >&2; exit 2 ;; esac
# etcd's own e2e key pair signs the JWTs (golang-etcd-server-dev).
FIXTURES=/usr/share/gocode/src/go.etcd.io/etcd/integration/fixtures
AUTH_FLAGS=()
if [ "$AUTH" = jwt ]; then
  [ -r "$FIXTURES/server.key.insecure" ] || { echo "--auth jwt needs $FIXTURES (apt-get install golang-etcd-server-dev)" >&2; exit 1; }
  AUTH_FLAGS=(--auth-token "jwt,pub-key=$FIXTURES/server.crt,priv-key=$FIXTURES/server.key.insecure,sign-method=RS256")
fi
# Client TLS (--tls): the same three flags for curl, etcdctl and oxcd-bench.
SCHEME=http
TLS_ARGS=()
SERVER_TLS=()
if [ "$TLS" = 1 ]; then
  [ -z "$AUTH" ] || { echo "--tls and --auth do not combine" >&2; exit 2; }
  [ -r "$FIXTURES/server.key.insecure" ] || { echo "--tls needs $FIXTURES (apt-get install golang-etcd-server-dev)" >&2; exit 1; }
  SCHEME=https
  TLS_ARGS=(--cacert "$FIXTURES/ca.crt" --cert "$FIXTURES/server.crt" --key "$FIXTURES/server.key.insecure")
  SERVER_TLS=(--cert-file "$FIXTURES/server.crt" --key-file "$FIXTURES/server.key.insecure"
    --trusted-ca-file "$FIXTURES/ca.crt" --client-cert-auth)
fi
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || { echo "--reps must be a positive integer" >&2; exit 2; }
for tool in jq curl awk; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
done
ETCDCTL="$(command -v etcdctl || true)"
[ -x "$ETCD_EXE" ] || { echo "no etcd at $ETCD_EXE (apt-get install etcd-server)" >&2; exit 1; }
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
LEADER=""
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

# Workload sizes: default (quick), --full (etcd's documented sizes) and
# --smoke (tiny).
if [ "$SIZES" = full ]; then
  PUT1=10000 PUTN=100000 FILLN=100000 RANGEN=100000 TXNN=100000 WLAT=10000 WFAN=5000 WKEYS=100000 LKA=100000 RESTARTN=1000000 CONNN=30000
  P64=20000 P1M=1000 R10K=5000 T128=20000 COMPACTN=1000000
elif [ "$SIZES" = smoke ]; then
  PUT1=200 PUTN=2000 FILLN=2000 RANGEN=2000 TXNN=500 WLAT=100 WFAN=50 WKEYS=200 LKA=2000 RESTARTN=5000 CONNN=200
  P64=100 P1M=10 R10K=50 T128=50 COMPACTN=5000
else
  PUT1=5000 PUTN=50000 FILLN=100000 RANGEN=50000 TXNN=20000 WLAT=1000 WFAN=2000 WKEYS=20000 LKA=50000 RESTARTN=250000 CONNN=10000
  P64=5000 P1M=300 R10K=2000 T128=5000 COMPACTN=1000000
fi
RESTARTN="${RESTARTN_ARG:-$RESTARTN}"
[[ "$RESTARTN" =~ ^[1-9][0-9]*$ ]] || { echo "--restart-keys must be a positive integer" >&2; exit 2; }
MANY="--conns 100 --clients 1000"
# name|bench arguments. Keys: 8 bytes; values: 256 bytes; `foo` is written
# by etcdctl before the workloads that read it. Rows named *-tonic drive
# the server through tonic's own client (`--client tonic`: tonic's
# Channel with its defaults, as a Rust user connects) instead of the
# generator's lean HTTP/2 client.
WORKLOADS=(
  "put-1client|--conns 1 --clients 1 put --total $PUT1 --key-size 8 --val-size 256 --sequential-keys"
  "put-1000clients|$MANY put --total $PUTN --key-size 8 --val-size 256 --key-space-size 100000"
  "put-1000clients-tonic|--client tonic $MANY put --total $PUTN --key-size 8 --val-size 256 --key-space-size 100000"
  "put-100k-keys|$MANY put --total $FILLN --key-size 8 --val-size 256 --key-space-size $FILLN --sequential-keys"
  "range-linearizable|$MANY range foo --consistency l --total $RANGEN"
  "range-serializable|$MANY range foo --consistency s --total $RANGEN"
  "txn-put|$MANY txn-put --total $TXNN --txn-ops 4 --key-size 8 --val-size 256 --key-space-size 100000"
  "watch-latency|--conns 10 --clients 10 watch-latency --total $WLAT --put-rate 200 --watchers 100 --streams 10"
  "watch-fanout|--conns 10 --clients 10 watch --streams 10 --watch-per-stream 100 --watched-key-total 1 --put-total $WFAN --put-rate 0 --key-size 8 --val-size 256"
  "watch-keys|--conns 10 --clients 100 watch --streams 100 --watch-per-stream 100 --watched-key-total 10000 --put-total $WKEYS --put-rate 0 --key-size 8 --val-size 256"
  "watch-prefix|--conns 10 --clients 100 watch --streams 10 --watch-per-stream 100 --watched-key-total 1000 --prefix --put-total $WKEYS --put-rate 0 --key-size 8 --val-size 256"
  "lease-keepalive|--conns 10 --clients 100 lease-keepalive --total $LKA"
)
if [ -n "$AUTH" ]; then
  # The same workloads without and with auth, on the same members.
  WORKLOADS=(
    "put-1000clients|$MANY put --total $PUTN --key-size 8 --val-size 256 --key-space-size 100000"
    "range-linearizable|$MANY range foo --consistency l --total $RANGEN"
    "range-serializable|$MANY range foo --consistency s --total $RANGEN"
    "put-1000clients-auth|--user bench:bench $MANY put --total $PUTN --key-size 8 --val-size 256 --key-space-size 100000"
    "range-linearizable-auth|--user bench:bench $MANY range foo --consistency l --total $RANGEN"
    "range-serializable-auth|--user bench:bench $MANY range foo --consistency s --total $RANGEN"
  )
fi
if [ "$TLS" = 1 ]; then
  WORKLOADS=(
    "put-1000clients-tls|$MANY put --total $PUTN --key-size 8 --val-size 256 --key-space-size 100000"
    "range-linearizable-tls|$MANY range foo --consistency l --total $RANGEN"
    "range-serializable-tls|$MANY range foo --consistency s --total $RANGEN"
    "connect-tls|--conns 1 --clients 100 connect foo --total $CONNN --rate 1000"
  )
fi
# VmRSS is recorded after these workloads: after put-100k-keys the key
# space holds exactly $FILLN keys (the earlier puts fall in the same space).
RSS_AFTER=(put-1000clients put-100k-keys)
if [ "$LARGE" = 1 ]; then
  [ -z "$AUTH" ] && [ "$TLS" = 0 ] || { echo "--large combines with neither --auth nor --tls" >&2; exit 2; }
  # Ordered so that range-10k-keys reads exactly the 10 000 filled keys
  # (all keys are 8-byte indices; later rows overwrite some of them).
  WORKLOADS=(
    "put-10k-keys|$MANY put --total 10000 --key-size 8 --val-size 256 --key-space-size 10000 --sequential-keys"
    "range-10k-keys|--conns 10 --clients 100 range --all --consistency l --total $R10K"
    "txn-128-puts|$MANY txn-put --total $T128 --txn-ops 128 --key-size 8 --val-size 256 --key-space-size 100000"
    "put-64KiB|--conns 10 --clients 100 put --total $P64 --key-size 8 --val-size 65536 --key-space-size 1000"
    "put-1MiB|--conns 10 --clients 10 put --total $P1M --key-size 8 --val-size 1048576 --key-space-size 100"
    "put-during-compaction|$MANY compact --revisions $COMPACTN --key-space-size 1000 --val-size 256 --rate 1000 --idle-total 5000"
  )
  RSS_AFTER=(put-64KiB put-1MiB)
fi
if [ -n "$ONLY" ]; then
  picked=()
  for entry in "${WORKLOADS[@]}"; do
    [[ "${entry%%|*}" =~ $ONLY ]] && picked+=("$entry")
  done
  [ "${#picked[@]}" -gt 0 ] || { echo "--only $ONLY matches no workload" >&2; exit 2; }
  WORKLOADS=("${picked[@]}")
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_servers KIND DIR: starts $MEMBERS members; sets PIDS and ENDPOINTS.
start_servers() {
  local kind="$1" dir="$2" bin base i cluster="" names=()
  case "$kind" in etcd) bin="$ETCD_EXE"; base=$ETCD_BASE_PORT ;; oxcd) bin="$OXCD_BIN"; base=$OXCD_BASE_PORT ;; esac
  ENDPOINTS=""
  for ((i = 0; i < MEMBERS; i++)); do
    names+=("m$i")
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 50 + i))"
    ENDPOINTS+="${ENDPOINTS:+,}$SCHEME://127.0.0.1:$((base + i))"
    port_free $((base + i)) && port_free $((base + 50 + i)) ||
      { echo "port $((base + i)) or $((base + 50 + i)) is in use" >&2; exit 1; }
  done
  for ((i = 0; i < MEMBERS; i++)); do
    local c="$SCHEME://127.0.0.1:$((base + i))" p="http://127.0.0.1:$((base + 50 + i))"
    "$bin" --name "m$i" --data-dir "$dir/m$i.etcd" \
      --listen-client-urls "$c" --advertise-client-urls "$c" \
      --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "bench-$kind" "${AUTH_FLAGS[@]}" "${SERVER_TLS[@]}" \
      >"$dir/m$i.log" 2>&1 </dev/null &
    PIDS+=("$!")
  done
  for ((i = 0; i < MEMBERS; i++)); do
    local ok=0
    for _ in $(seq 300); do
      kill -0 "${PIDS[$i]}" 2>/dev/null || break
      if curl -sf "${TLS_ARGS[@]}" "$SCHEME://127.0.0.1:$((base + i))/health" | grep -q '"health": *"true"'; then ok=1; break; fi
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
  json=$(ETCDCTL_API=3 timeout 5 "$ETCDCTL" "${TLS_ARGS[@]}" --endpoints "$1" --dial-timeout 1s --command-timeout 2s \
    endpoint status -w json 2>/dev/null) || return 0
  printf '%s %s\n' "$(grep -o '"member_id":[0-9]*' <<<"$json" | head -1 | cut -d: -f2)" \
    "$(grep -o '"leader":[0-9]*' <<<"$json" | head -1 | cut -d: -f2)"
}

# wait_leader KIND DIR: until every member names the same leader, that
# leader is one of them, and a linearizable read through each member
# succeeds (so the leader has committed in its term). At most 30 s.
wait_leader() {
  local kind="$1" dir="$2" ep st ids leader agreed eps
  IFS=, read -ra eps <<<"$ENDPOINTS"
  for _ in $(seq 60); do
    ids=" " leader="" agreed=1
    for ep in "${eps[@]}"; do
      st=$(member_status "$ep")
      if [ -z "${st#* }" ] || [ "${st#* }" = 0 ]; then agreed=0; break; fi
      ids+="${st% *} "
      if [ -z "$leader" ]; then leader="${st#* }"; elif [ "$leader" != "${st#* }" ]; then agreed=0; break; fi
    done
    if [ "$agreed" = 1 ] && [[ "$ids" == *" $leader "* ]]; then
      for ep in "${eps[@]}"; do
        ETCDCTL_API=3 timeout 5 "$ETCDCTL" "${TLS_ARGS[@]}" --endpoints "$ep" --dial-timeout 1s --command-timeout 3s \
          get --consistency=l bench-probe >/dev/null 2>&1 || { agreed=0; break; }
      done
      [ "$agreed" = 1 ] && { LEADER="$leader"; return 0; }
    fi
    sleep 0.5
  done
  echo "$kind: the $MEMBERS member(s) did not agree on a leader within 30 s; logs in $dir" >&2
  for ((i = 0; i < MEMBERS; i++)); do tail -5 "$dir/m$i.log" >&2; done
  KEEP=1
  exit 1
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
# and "kind rep rss-after-WORKLOAD ok KiB" after each workload in RSS_AFTER.
run_turn() {
  local kind="$1" rep="$2" dir="$WORK/$1-$2" entry name args before after line rc ok
  mkdir -p "$dir"
  # The previous turn's dirty pages (and its removed data dir) are written
  # back before this turn starts, so that neither server pays for the
  # other's I/O.
  sync
  start_servers "$kind" "$dir"
  local target=""
  [ "$MEMBERS" -gt 1 ] && [ "$SPREAD" = 0 ] && target="--target-leader"
  local auth_on=0
  for entry in "${WORKLOADS[@]}"; do
    name="${entry%%|*}" args="${entry#*|}"
    if [[ "$name" == *-auth ]] && [ "$auth_on" = 0 ]; then
      # Fresh members: the rows with auth must not pay for the data the
      # rows without it wrote.
      stop_servers
      mkdir -p "$dir/auth"
      start_servers "$kind" "$dir/auth"
      ETCDCTL_API=3 "$ETCDCTL" --endpoints "$ENDPOINTS" put foo "$(head -c 256 /dev/zero | tr '\0' v)" >/dev/null
      bench_enable_auth "$ETCDCTL" "$ENDPOINTS"
      auth_on=1
    fi
    if [[ "$args" == *" foo "* ]] && [ "$auth_on" = 0 ]; then
      ETCDCTL_API=3 "$ETCDCTL" "${TLS_ARGS[@]}" --endpoints "$ENDPOINTS" put foo "$(head -c 256 /dev/zero | tr '\0' v)" >/dev/null
    fi
    echo "  $kind rep $rep: $name" >&2
    before=$(cpu_ticks)
    rc=0
    # shellcheck disable=SC2086 # args is a word list on purpose
    line=$(timeout $((BENCH_TIMEOUT + 60)) "$BENCH" --endpoints "$ENDPOINTS" "${TLS_ARGS[@]}" $target --json \
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
    if [ "$name" = watch-fanout ] || [ "$name" = watch-keys ] || [ "$name" = watch-prefix ]; then
      # A row per delivered event: events/s, CPU per event; events that
      # never arrived count as errors. p50/p99 are watcher creation.
      line=$(jq -c '.ok = .extra.events_received | .ops_per_sec = .extra.events_per_sec
        | .errors = (.errors + .extra.put_errors + .extra.events_expected - .extra.events_received)' <<<"$line")
    fi
    if [ "$name" = put-during-compaction ]; then
      for x in compaction_s idle_p99_ms p99_during_over_idle; do
        printf '%s\t%s\t%s\tok\t%s\n' "$kind" "$rep" "$x" "$(jq -r ".extra.$x" <<<"$line")" >>"$RESULTS"
      done
    fi
    ok=$(jq -r '.ok' <<<"$line")
    jq -r --arg k "$kind" --arg r "$rep" --arg n "$name" \
      --argjson cpu "$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v ok="$ok" \
        'BEGIN { printf "%.3f", (ok > 0 ? d / hz * 1e6 / ok : 0) }')" \
      '[$k, $r, $n, "ok", .ops_per_sec, .p50_ms, .p99_ms, .p999_ms, .max_ms, .errors, $cpu] | @tsv' \
      <<<"$line" >>"$RESULTS"
    if [[ " ${RSS_AFTER[*]} " == *" $name "* ]]; then
      printf '%s\t%s\trss-after-%s\tok\t%s\n' "$kind" "$rep" "$name" "$(rss_kib)" >>"$RESULTS"
    fi
  done
  local now
  now=$(member_status "${ENDPOINTS%%,*}")
  if [ "${now#* }" != "$LEADER" ]; then
    echo "    warning: $kind rep $rep: the leader changed during the turn ($LEADER -> ${now#* })" >&2
  fi
  [ -n "$AUTH" ] || [ -n "$ONLY" ] || [ "$TLS" = 1 ] || [ "$LARGE" = 1 ] || restart_turn "$kind" "$rep" "$dir" "$target"
  stop_servers
}


# restart_turn KIND REP DIR TARGET: loads $RESTARTN keys (256-byte values),
# stops the members (SIGTERM, as an operator would), starts them again on
# the same data dirs and records the seconds until every member is healthy
# and a linearizable read succeeds through each, then the RSS.
restart_turn() {
  local kind="$1" rep="$2" dir="$3" target="$4" t0 t1 rc=0
  echo "  $kind rep $rep: restart after $RESTARTN keys" >&2
  # shellcheck disable=SC2086 # target is a word list on purpose
  timeout $((BENCH_TIMEOUT * 4 + 60)) "$BENCH" --endpoints "$ENDPOINTS" $target --json \
    --timeout $((BENCH_TIMEOUT * 4)) --conns 100 --clients 1000 put --total "$RESTARTN" \
    --key-size 8 --val-size 256 --key-space-size "$RESTARTN" --sequential-keys \
    >/dev/null 2>>"$dir/bench.err" || rc=$?
  if [ "$rc" != 0 ]; then
    echo "    loading failed (exit $rc), see $dir/bench.err" >&2
    printf '%s\t%s\trestart\tfailed\n' "$kind" "$rep" >>"$RESULTS"
    return
  fi
  stop_servers
  # What the stopped members left dirty is written back before the clock
  # starts: the restart measures reading, not the last turn's write-back.
  sync
  t0=$(date +%s.%N)
  start_servers "$kind" "$dir"
  t1=$(date +%s.%N)
  printf '%s\t%s\trestart\tok\t%s\n' "$kind" "$rep" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" >>"$RESULTS"
  printf '%s\t%s\trss-after-restart\tok\t%s\n' "$kind" "$rep" "$(rss_kib)" >>"$RESULTS"
}

echo "results in $WORK (reps=$REPS, members=$MEMBERS, spread=$SPREAD, tls=$TLS, sizes=$SIZES)" >&2
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
mib() { awk -v v="$1" 'BEGIN { if (v ~ /^[0-9.e+]+$/) printf "%.1f", v / 1024; else print v }'; }
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
  if [ -z "$AUTH" ] && [ -z "$ONLY" ] && [ "$TLS" = 0 ]; then
    echo
    echo "| memory | etcd | oxcd | ratio |"
    echo "|---|---|---|---|"
    for name in "${RSS_AFTER[@]}"; do
      e=$(median etcd "rss-after-$name" 5) o=$(median oxcd "rss-after-$name" 5)
      echo "| RSS after $name (MiB) | $(mib "$e") | $(mib "$o") | $(ratio "$o" "$e") |"
    done
    if [ "$LARGE" = 0 ]; then
      e=$(median etcd "rss-after-restart" 5) o=$(median oxcd "rss-after-restart" 5)
      echo "| RSS after restart with $RESTARTN keys (MiB) | $(mib "$e") | $(mib "$o") | $(ratio "$o" "$e") |"
      echo
      echo "| restart | etcd | oxcd | ratio |"
      echo "|---|---|---|---|"
      e=$(median etcd restart 5) o=$(median oxcd restart 5)
      echo "| seconds from start to serving linearizable reads, $RESTARTN keys | $e | $o | $(ratio "$o" "$e") |"
    fi
  fi
  if grep -q $'\tcompaction_s\t' "$RESULTS"; then
    echo
    echo "| compaction of $COMPACTN+ revisions under puts at 1000/s | etcd | oxcd | ratio |"
    echo "|---|---|---|---|"
    for x in compaction_s idle_p99_ms; do
      e=$(median etcd "$x" 5) o=$(median oxcd "$x" 5)
      echo "| $x | $e | $o | $(ratio "$o" "$e") |"
    done
    e=$(median etcd p99_during_over_idle 5) o=$(median oxcd p99_during_over_idle 5)
    echo "| put p99 during compaction / idle p99 (target ≤ 2) | $e | $o | |"
  fi
  if [ -n "$AUTH" ]; then
    echo
    echo "| auth cost ($AUTH tokens): ops/s with auth / without | etcd | oxcd |"
    echo "|---|---|---|"
    for w in put-1000clients range-linearizable range-serializable; do
      echo "| $w | $(ratio "$(median etcd "$w-auth" 5)" "$(median etcd "$w" 5)") | $(ratio "$(median oxcd "$w-auth" 5)" "$(median oxcd "$w" 5)") |"
    done
  fi
  echo
  echo "Medians of $REPS repetition(s), $MEMBERS member(s)$([ "$SPREAD" = 1 ] && echo ", clients spread over all members")$([ "$TLS" = 1 ] && echo ", clients over TLS with client certificates"). ratio = oxcd/etcd: above 1 is better for ops/s, below 1 is better for latency, CPU and memory. n/a: the server answers Unimplemented."
} | tee "${OUT:-/dev/null}"

#!/usr/bin/env bash
# How one member copes with N slow HTTP/1.1 clients on its client port, oxcd
# and etcd side by side. Three scenarios, each on a fresh single member
# (own loopback ports, fresh temp data dir), with N concurrent connections:
#   headers  (a) slowloris: "POST /v3/kv/range HTTP/1.1", "Host: x", then one
#            more header byte every 5 s, the headers never finished;
#   body     (b) slow body: /v3/kv/put with Content-Length: 1000, then one
#            body byte every 5 s;
#   reader   (c) slow reader: a chunked POST /v3/watch on prefix "a", the
#            socket never read, while another client puts 200 values of
#            64 KiB under "a" through the gateway (/v3/kv/put).
# While the connections are held (--hold seconds) the server is sampled once
# a second: VmRSS, open fds, and one well-behaved range through curl -m 5.
# Reported per server and scenario: RSS before / max during / 5 s after the
# slow connections closed, max fds, well-behaved successes and p50/max
# latency, slow connections the server closed itself and the median (min-max)
# seconds until it did. The work is done by bench/slow_clients.py (python3,
# standard library); the server is stopped and the next started in between.
#
# Usage: bench/slow-clients.sh [--clients N] [--reader-clients N] [--hold SECONDS]
#          [--scenarios "headers body reader"] [--servers "oxcd etcd"]
#          [--rss-limit-mib M] [--out FILE]
#   --clients N          slow connections per scenario (default 10000)
#   --reader-clients N   connections for scenario (c) (default: --clients)
#   --hold SECONDS       how long the connections are held (default 60)
#   --rss-limit-mib M    a scenario ends early, puts stop, once the server's
#                        RSS passes M MiB (default 6144), so it cannot take
#                        the machine down
#   --out FILE           also write the markdown table to FILE
# Memory: the watch body in (c) is complete (etcd's HTTP/1 server answers
# nothing while a request body is open). Each slow reader holds up to
# 200 x 64 KiB of events; etcd 3.4 keeps buffering them (1000 readers took it
# to ~3.7 GiB), oxcd caps them near 0.8 MiB a reader, still ~8 GiB for
# 10000, so on a machine without that to spare use --reader-clients 1000.
# "RSS after" is what the allocator kept, not by itself a leak.
# Environment: OXCD_BIN (default target/release/oxcd), ETCD_BIN (default
# /usr/bin/etcd), KEEP_RESULTS=FILE keeps the raw JSON lines (with the
# per-second samples). Needs python3 and curl. The soft fd limit is raised to the
# hard one (N connections need N client and N server fds).
#
# Only processes this script started are signalled, by their saved pid, also
# on error (trap). All traffic goes to 127.0.0.1; every wait is bounded.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OXCD_BIN="${OXCD_BIN:-$ROOT/target/release/oxcd}"
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
HELPER="$ROOT/bench/slow_clients.py"
CLIENTS=10000
READERS=""
HOLD=60
RSS_LIMIT=6144
SCENARIOS="headers body reader"
SERVERS="oxcd etcd"
OUT=""
BASE_PORT=26379
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) CLIENTS="$2"; shift 2 ;;
    --reader-clients) READERS="$2"; shift 2 ;;
    --hold) HOLD="$2"; shift 2 ;;
    --rss-limit-mib) RSS_LIMIT="$2"; shift 2 ;;
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --servers) SERVERS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
READERS="${READERS:-$CLIENTS}"
for n in "$CLIENTS" "$READERS" "$HOLD" "$RSS_LIMIT"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "--clients, --reader-clients, --hold and --rss-limit-mib take positive integers" >&2; exit 2; }
done
for s in $SCENARIOS; do
  case "$s" in headers|body|reader) ;; *) echo "unknown scenario: $s" >&2; exit 2 ;; esac
done
for s in $SERVERS; do
  case "$s" in oxcd|etcd) ;; *) echo "unknown server: $s" >&2; exit 2 ;; esac
done
command -v python3 >/dev/null || { echo "needs python3" >&2; exit 2; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 2; }
for b in "$OXCD_BIN" "$ETCD_BIN"; do
  [ -x "$b" ] || { echo "not executable: $b (set OXCD_BIN / ETCD_BIN)" >&2; exit 2; }
done

ulimit -n "$(ulimit -Hn)"
need=$((CLIENTS > READERS ? CLIENTS : READERS))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((need + 1000)) ]; then
  echo "fd limit $(ulimit -n) is too low for $need connections" >&2
  exit 2
fi

WORK="$(mktemp -d /tmp/oxcd-slow.XXXXXX)"
PID=""

# stop: SIGTERM the server started by `start`, SIGKILL after 10 s.
stop() {
  if [ -n "$PID" ]; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
  fi
}
trap 'stop; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# start BIN DIR PORT: a single member on 127.0.0.1:PORT (peer PORT+1); waits
# (at most 20 s) until a range through the gateway answers 200.
start() {
  local ep="127.0.0.1:$3" peer="http://127.0.0.1:$(($3 + 1))"
  "$1" --name d --data-dir "$2" --listen-client-urls "http://$ep" \
    --advertise-client-urls "http://$ep" --listen-peer-urls "$peer" \
    --initial-advertise-peer-urls "$peer" --initial-cluster "d=$peer" >"$2.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 400); do
    [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' -X POST "http://$ep/v3/kv/range" \
      -d '{"key":"YQ=="}' || true)" = 200 ] && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "server did not start; log:" >&2
  cat "$2.log" >&2
  exit 1
}

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
port=$BASE_PORT
for server in $SERVERS; do
  bin="$OXCD_BIN"
  [ "$server" = etcd ] && bin="$ETCD_BIN"
  for scenario in $SCENARIOS; do
    n="$CLIENTS"
    [ "$scenario" = reader ] && n="$READERS"
    echo "== $server, $scenario, $n connections, hold $HOLD s (port $port)" >&2
    start "$bin" "$WORK/$server-$scenario" "$port"
    python3 "$HELPER" run --port "$port" --pid "$PID" --scenario "$scenario" \
      --clients "$n" --hold "$HOLD" --label "$server" --rss-limit-mib "$RSS_LIMIT" >>"$RESULTS"
    stop
    rm -rf "$WORK/$server-$scenario"
    port=$((port + 10))
  done
done

table() {
  echo "Slow HTTP/1.1 clients on the client port: $CLIENTS connections ($READERS for reader), held $HOLD s;"
  echo "RSS after = 5 s after the slow connections were closed; probes = one curl range a second (-m 5)."
  echo
  python3 "$HELPER" table "$RESULTS"
}
table
[ -n "$OUT" ] && table >"$OUT"
[ -n "${KEEP_RESULTS:-}" ] && cp "$RESULTS" "$KEEP_RESULTS"
exit 0

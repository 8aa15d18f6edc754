# Shared by bench/disk.sh and bench/defrag.sh (sourced, not run): one
# single-member server at a time on 127.0.0.1:$PORT, started from a binary
# and stopped by its saved pid. Needs PORT and WORK set, and etcdctl.

PID=""

# stop: SIGTERM the server started by `start`, SIGKILL after 10 s.
stop() {
  if [ -n "$PID" ]; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$PID" 2>/dev/null || true
    PID=""
  fi
}
trap 'stop; rm -rf "$WORK"' EXIT

EP="127.0.0.1:$PORT"

# start BIN DIR: a single member with an 8 GiB quota; waits until healthy
# (up to START_POLLS polls, default 200, 50 ms apart).
start() {
  "$1" --name d --data-dir "$2" --listen-client-urls "http://$EP" \
    --advertise-client-urls "http://$EP" --listen-peer-urls "http://127.0.0.1:$((PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((PORT + 1))" \
    --initial-cluster "d=http://127.0.0.1:$((PORT + 1))" \
    --quota-backend-bytes 8589934592 >"$2.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 "${START_POLLS:-200}"); do
    etcdctl --endpoints="$EP" --dial-timeout=1s endpoint health >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "server did not start; log:" >&2
  cat "$2.log" >&2
  exit 1
}

# rev: the server's current revision.
rev() { etcdctl --endpoints="$EP" endpoint status -w json | jq -r '.[0].Status.header.revision'; }

# load TOTAL KEYSPACE VALSIZE: puts from 100 clients, sequential keys.
load() {
  "$BENCH" --endpoints "$EP" --conns 10 --clients 100 --timeout 900 put \
    --total "$1" --key-space-size "$2" --val-size "$3" --sequential-keys >/dev/null
}

# median: the median of the numbers on stdin, one per line (the lower of
# the two middle ones for an even count).
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# ratio A B: A / B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# col_median ROWS C: the median of column C of ROWS ('|'-separated lines).
col_median() { awk -F'|' -v c="$2" 'NF > 1 { print $c }' <<<"$1" | median; }

# ratio_median ROWS A B: the median over ROWS of column A / column B, with
# two decimals.
ratio_median() {
  printf %.2f "$(awk -F'|' -v a="$2" -v b="$3" 'NF > 1 { printf "%.4f\n", $a / $b }' <<<"$1" | median)"
}

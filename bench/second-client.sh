#!/usr/bin/env bash
# The auth and no-auth put/range rows again, with a second client: the
# third-party `etcd-client` crate (crates/oxcd/examples/etcd_client_load.rs)
# instead of oxcd-bench, so a result does not rest on our own client.
#
# Per repetition the two servers take turns on fresh single members: put
# and range at CLIENTS clients with auth off, then on another fresh member
# with auth on, as a plain user holding a readwrite role on every key (as
# compare.sh --auth does). Prints the median ops/s and p99 per row and the auth ratios.
#
# Usage: bench/second-client.sh [--reps N] [--clients N] [--total N]
#                                [--auth simple|jwt] [--no-build]
# Only processes this script started are signalled, by their saved pid;
# all traffic goes to 127.0.0.1; every run has an outer timeout.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/auth-setup.sh
. "$ROOT/bench/auth-setup.sh"
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
OXCD_BIN="${OXCD_BIN:-$ROOT/target/release/oxcd}"
LOAD="$ROOT/target/release/examples/etcd_client_load"
REPS=3 CLIENTS=1000 TOTAL=50000 AUTH=simple BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --clients) CLIENTS="$2"; shift 2 ;;
    --total) TOTAL="$2"; shift 2 ;;
    --auth) AUTH="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
FIXTURES=/usr/share/gocode/src/go.etcd.io/etcd/integration/fixtures
AUTH_FLAGS=()
case "$AUTH" in
  simple) ;;
  jwt) AUTH_FLAGS=(--auth-token "jwt,pub-key=$FIXTURES/server.crt,priv-key=$FIXTURES/server.key.insecure,sign-method=RS256") ;;
  *) echo "--auth must be simple or jwt" >&2; exit 2 ;;
esac
ETCDCTL="$(command -v etcdctl)"
while read -r var; do unset "$var"; done < <(compgen -e | grep '^ETCD_' || true)
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && flock /tmp/oxcd-cargo.lock cargo build --release -p oxcd --bin oxcd --example etcd_client_load)
fi
WORK="$(mktemp -d /tmp/oxcd-second.XXXXXX)"
RESULTS="$WORK/results.tsv"
PID=""
cleanup() {
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

run_turn() {
  local kind="$1" rep="$2" bin port=23579 ep line phase op
  case "$kind" in etcd) bin="$ETCD_BIN" ;; oxcd) bin="$OXCD_BIN" ;; esac
  ep="127.0.0.1:$port"
  # A fresh member per phase: the rows with auth must not pay for the
  # data the rows without it wrote.
  for phase in off on; do
    local dir="$WORK/$kind-$rep-$phase"
    mkdir -p "$dir"
    "$bin" --name m --data-dir "$dir/m.etcd" --listen-client-urls "http://$ep" \
      --advertise-client-urls "http://$ep" --listen-peer-urls http://127.0.0.1:23580 \
      --initial-advertise-peer-urls http://127.0.0.1:23580 --initial-cluster m=http://127.0.0.1:23580 \
      "${AUTH_FLAGS[@]}" >"$dir/log" 2>&1 </dev/null &
    PID=$!
    for _ in $(seq 300); do curl -sf "http://$ep/health" | grep -q true && break; sleep 0.1; done
    local user=()
    if [ "$phase" = on ]; then
      bench_enable_auth "$ETCDCTL" "$ep"
      user=(bench:bench)
    fi
    for op in put range; do
      echo "  $kind rep $rep: $op auth $phase" >&2
      line=$(timeout 400 "$LOAD" "http://$ep" "$op" "$CLIENTS" "$TOTAL" "${user[@]}" | tail -1)
      printf '%s\t%s\t%s-%s\t%s\t%s\t%s\n' "$kind" "$rep" "$op" "$phase" \
        "$(jq -r .ops_per_sec <<<"$line")" "$(jq -r .p99_ms <<<"$line")" "$(jq -r .errors <<<"$line")" >>"$RESULTS"
    done
    kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  done
}

for ((rep = 1; rep <= REPS; rep++)); do
  if ((rep % 2)); then order=(etcd oxcd); else order=(oxcd etcd); fi
  for kind in "${order[@]}"; do run_turn "$kind" "$rep"; done
done

median() { # KIND ROW COLUMN
  awk -F'\t' -v k="$1" -v w="$2" -v c="$3" '$1 == k && $3 == w { v[n++] = $c }
    END { if (!n) { print "n/a"; exit }
      for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      m = (n % 2) ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2; if (m >= 1000) printf "%.0f\n", m; else printf "%.4g\n", m }' "$RESULTS"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo "| row (etcd-client, $CLIENTS clients, $AUTH tokens) | etcd ops/s | oxcd ops/s | ratio | etcd p99 ms | oxcd p99 ms | errors etcd/oxcd |"
echo "|---|---|---|---|---|---|---|"
for row in put-off range-off put-on range-on; do
  e=$(median etcd "$row" 4) o=$(median oxcd "$row" 4)
  echo "| $row | $e | $o | $(ratio "$o" "$e") | $(median etcd "$row" 5) | $(median oxcd "$row" 5) | $(median etcd "$row" 6)/$(median oxcd "$row" 6) |"
done
echo
echo "| auth on / off (ops/s) | etcd | oxcd |"
echo "|---|---|---|"
for op in put range; do
  echo "| $op | $(ratio "$(median etcd "$op-on" 4)" "$(median etcd "$op-off" 4)") | $(ratio "$(median oxcd "$op-on" 4)" "$(median oxcd "$op-off" 4)") |"
done
echo
echo "Medians of $REPS repetition(s), 1 member, client: etcd-client crate (crates/oxcd/examples/etcd_client_load.rs)."

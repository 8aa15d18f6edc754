#!/usr/bin/env bash
# Runs every check oxcd has: formatting, clippy, and all tests (unit tests
# plus black-box tests that start real oxcd processes and drive them with
# the real etcdctl and the etcd-client crate). Installs the Debian packages
# the tests need when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
# etcd's alert rules and Grafana dashboard (tests/metrics.rs reads them).
[ -e /usr/share/doc/etcd-server/op-guide/grafana.json.gz ] || need+=(etcd-server)
# A venv for OpenStack's etcd3gw client (tests/etcd3gw.rs).
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

# A one-off build gains nothing from incremental caches, which would double
# the target directory's size on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

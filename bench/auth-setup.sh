# Sourced by the bench scripts: turns auth on for a benchmark.
#
# bench_enable_auth ETCDCTL ENDPOINTS: root, and a plain user bench:bench
# whose role may read and write every key (so each request goes through a
# real permission check, not root's shortcut), then auth on.
bench_enable_auth() {
  local c=(env ETCDCTL_API=3 "$1" --endpoints "$2")
  "${c[@]}" user add root:root >/dev/null
  "${c[@]}" user grant-role root root >/dev/null
  "${c[@]}" role add bench >/dev/null
  "${c[@]}" role grant-permission bench readwrite --from-key '' >/dev/null
  "${c[@]}" user add bench:bench >/dev/null
  "${c[@]}" user grant-role bench bench >/dev/null
  "${c[@]}" auth enable >/dev/null
}

# Sourced by the scripts that run a client against a fresh three-member Ballot cluster
# (tests/etcdctl, tests/clients). Defines:
#
#   find_ballot_bin REPO [BIN]  prints BIN, or target/release/ballot, or target/debug/ballot
#   start_dev_cluster BIN WORK  starts `ballot dev --members 3` with its data under WORK/cluster,
#                               waits (at most 60 s) until every member answers, and sets
#                               $dev_pid and $endpoints (comma-separated host:port)
#   stop_dev_cluster            stops it (ballot dev stops its members on SIGTERM and waits)
#   show_dev_logs WORK          prints the tail of each member's log and ballot dev's stderr
#   with_dev_cluster BIN CMD..  all of the above around `CMD.. $endpoints` in a temporary WORK:
#                               exits with CMD's status, printing the logs if it failed

dev_pid=""
endpoints=""

find_ballot_bin() {
  local repo=$1 bin=${2:-} candidate
  if [ -z "$bin" ]; then
    for candidate in "$repo/target/release/ballot" "$repo/target/debug/ballot"; do
      [ -x "$candidate" ] && { bin=$candidate; break; }
    done
  fi
  [ -n "$bin" ] && [ -x "$bin" ] || return 1
  echo "$bin"
}

start_dev_cluster() {
  local bin=$1 work=$2 deadline
  # 4 MiB WAL segments instead of 64 MiB: each member preallocates a segment plus one ahead,
  # and the tests write far less than that.
  "$bin" dev --members 3 --dir "$work/cluster" --wal-segment-bytes=4194304 \
    >"$work/dev.out" 2>"$work/dev.err" &
  dev_pid=$!
  deadline=$((SECONDS + 60))
  until grep -q '^ballot dev: cluster ready' "$work/dev.out"; do
    if ! kill -0 "$dev_pid" 2>/dev/null; then
      echo "dev-cluster: ballot dev exited before the cluster was ready" >&2
      dev_pid=""
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "dev-cluster: the cluster was not ready after 60 s" >&2
      return 1
    fi
    sleep 0.1
  done
  endpoints=$(sed -n 's/^  etcdctl --endpoints=\([^ ]*\) put foo bar$/\1/p' "$work/dev.out")
  [ -n "$endpoints" ] || { echo "dev-cluster: no endpoints in the output of ballot dev" >&2; return 1; }
}

stop_dev_cluster() {
  if [ -n "$dev_pid" ]; then
    kill -TERM "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
    dev_pid=""
  fi
}

show_dev_logs() {
  local work=$1 log
  for log in "$work"/cluster/*.log; do
    [ -f "$log" ] || continue
    echo "--- last lines of $log" >&2
    tail -n 30 "$log" >&2
  done
  echo "--- ballot dev stderr" >&2
  cat "$work/dev.err" >&2 || true
}

with_dev_cluster() {
  local bin=$1 status=1
  shift
  dev_work=$(mktemp -d)
  # The trap runs in the caller's shell when it exits, however it exits.
  trap 'stop_dev_cluster; [ "${dev_status:-1}" -eq 0 ] || show_dev_logs "$dev_work"; rm -rf "$dev_work"' EXIT
  start_dev_cluster "$bin" "$dev_work"
  set +e
  "$@" "$endpoints"
  status=$?
  set -e
  dev_status=$status
  exit "$status"
}

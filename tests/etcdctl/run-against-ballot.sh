#!/usr/bin/env bash
# Runs the etcdctl compatibility suite against a fresh three-member Ballot cluster.
#
# usage: tests/etcdctl/run-against-ballot.sh [BALLOT_BIN] [--skip-slow]
#   BALLOT_BIN   the ballot executable (default: target/release/ballot, then target/debug/ballot)
#   --skip-slow  passed to suite.sh (skips `check perf --load=s`, 60 s)
#
# The cluster is started with `ballot dev --members 3` (free loopback ports, data under a
# temporary directory) and stopped when the suite ends, whatever its outcome. On failure the
# tail of each member's log is printed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=""
suite_args=()
for arg in "$@"; do
  case $arg in
    --skip-slow) suite_args+=("$arg") ;;
    *) bin=$arg ;;
  esac
done
if [ -z "$bin" ]; then
  for candidate in "$repo/target/release/ballot" "$repo/target/debug/ballot"; do
    [ -x "$candidate" ] && { bin=$candidate; break; }
  done
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "run-against-ballot: no ballot executable (build it or pass its path)" >&2; exit 2; }

work=$(mktemp -d)
dev_pid=""
status=1

show_logs() {
  local log
  for log in "$work"/cluster/*.log; do
    [ -f "$log" ] || continue
    echo "--- last lines of $log" >&2
    tail -n 30 "$log" >&2
  done
  echo "--- ballot dev stderr" >&2
  cat "$work/dev.err" >&2 || true
}

cleanup() {
  if [ -n "$dev_pid" ]; then
    # ballot dev stops its members on SIGTERM and waits for them.
    kill -TERM "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
  [ "$status" -eq 0 ] || show_logs
  rm -rf "$work"
}
trap cleanup EXIT

# 4 MiB WAL segments instead of 64 MiB: each member preallocates a segment plus one ahead, and
# the suite writes far less than that.
"$bin" dev --members 3 --dir "$work/cluster" --wal-segment-bytes=4194304 \
  >"$work/dev.out" 2>"$work/dev.err" &
dev_pid=$!

# Wait (bounded) for `ballot dev` to report that every member answers reads.
deadline=$((SECONDS + 60))
until grep -q '^ballot dev: cluster ready' "$work/dev.out"; do
  if ! kill -0 "$dev_pid" 2>/dev/null; then
    echo "run-against-ballot: ballot dev exited before the cluster was ready" >&2
    dev_pid=""
    exit 1
  fi
  if [ $SECONDS -ge $deadline ]; then
    echo "run-against-ballot: the cluster was not ready after 60 s" >&2
    exit 1
  fi
  sleep 0.1
done
endpoints=$(sed -n 's/^  etcdctl --endpoints=\([^ ]*\) put foo bar$/\1/p' "$work/dev.out")
[ -n "$endpoints" ] || { echo "run-against-ballot: no endpoints in the output of ballot dev" >&2; exit 1; }

set +e
# SUITE_MEMBER_BIN: the suite starts a learner of its own with this binary and promotes it.
SUITE_MEMBER_BIN=$bin "$here/suite.sh" "$endpoints" "${suite_args[@]}"
status=$?
set -e
exit "$status"

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
# shellcheck source=../lib/dev-cluster.sh
. "$repo/tests/lib/dev-cluster.sh"
bin=""
suite_args=()
for arg in "$@"; do
  case $arg in
    --skip-slow) suite_args+=("$arg") ;;
    *) bin=$arg ;;
  esac
done
run_suite() {
  "$here/suite.sh" "$1" "${suite_args[@]}"
}
bin=$(find_ballot_bin "$repo" "$bin") || { echo "run-against-ballot: no ballot executable (build it or pass its path)" >&2; exit 2; }

# SUITE_MEMBER_BIN: the suite starts a learner of its own with this binary and promotes it.
export SUITE_MEMBER_BIN=$bin
with_dev_cluster "$bin" run_suite

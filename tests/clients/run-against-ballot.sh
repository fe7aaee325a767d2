#!/usr/bin/env bash
# Runs the client-library checks (check.sh) against a fresh three-member Ballot cluster started
# with `ballot dev --members 3`, stopped again when the checks end, whatever their outcome. On
# failure the tail of each member's log is printed. CI runs this from .ci/run.
#
# usage: tests/clients/run-against-ballot.sh [BALLOT_BIN]
#   BALLOT_BIN  the ballot executable (default: target/release/ballot, then target/debug/ballot)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/dev-cluster.sh
. "$repo/tests/lib/dev-cluster.sh"
bin=$(find_ballot_bin "$repo" "${1:-}") \
  || { echo "run-against-ballot: no ballot executable (build it or pass its path)" >&2; exit 2; }

with_dev_cluster "$bin" "$here/check.sh"

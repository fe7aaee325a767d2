#!/usr/bin/env bash
# The etcdctl compatibility suite as CI runs it (called from .ci/run): installs Debian's
# etcd-client (etcdctl 3.4) when etcdctl is missing, builds ballot in release mode (as users run
# it; `check perf` measures throughput), and runs the suite against a three-member cluster.
#
# usage: tests/etcdctl/ci.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

# Install only when etcdctl is missing, and only where that is possible (root with apt-get), so
# a developer's machine that already has etcdctl is left alone.
if ! command -v etcdctl >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq etcd-client >/dev/null
  else
    echo "etcdctl-ci: etcdctl is missing and cannot be installed here (needs root and apt-get)" >&2
    exit 1
  fi
fi

cargo build --release -p ballot
target_dir=${CARGO_TARGET_DIR:-target}
exec tests/etcdctl/run-against-ballot.sh "$target_dir/release/ballot"

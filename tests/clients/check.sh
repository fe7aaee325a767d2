#!/usr/bin/env bash
# Runs the client-library checks against a running cluster: the etcd3 Node.js client (over
# @grpc/grpc-js), python-etcd3 (over grpcio) and etcd3gw (etcd's JSON gateway over HTTP), each at
# the version pinned here. Installs them
# first if needed: `npm ci` into node/node_modules, and a virtualenv under target/client-venv
# (both from the public registries; nothing is installed system-wide).
#
# usage: tests/clients/check.sh HOST:PORT,HOST:PORT,HOST:PORT
#
# Works against etcd as well, which is how the checks were validated:
#   ../shared/tools/etcd-cluster.sh start /tmp/ref
#   tests/clients/check.sh 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
endpoints=${1:?usage: tests/clients/check.sh HOST:PORT[,HOST:PORT...]}

command -v node >/dev/null && command -v npm >/dev/null \
  || { echo "client-check: node and npm are needed" >&2; exit 2; }
command -v python3 >/dev/null || { echo "client-check: python3 is needed" >&2; exit 2; }

if [ ! -d "$here/node/node_modules/etcd3" ]; then
  (cd "$here/node" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
venv=${CARGO_TARGET_DIR:-$repo/target}/client-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import etcd3, etcd3gw' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/python/requirements.txt"
fi

status=0
echo "+ node tests/clients/node/check.js $endpoints"
node "$here/node/check.js" "$endpoints" || status=1
echo "+ python tests/clients/python/check.py $endpoints"
"$venv/bin/python" "$here/python/check.py" "$endpoints" || status=1
echo "+ python tests/clients/python/check_gateway.py $endpoints"
"$venv/bin/python" "$here/python/check_gateway.py" "$endpoints" || status=1
exit "$status"

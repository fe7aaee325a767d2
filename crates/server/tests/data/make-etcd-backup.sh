#!/usr/bin/env bash
# Makes etcd-3.4-backup.db, the etcd backup that tests/etcd_import.rs restores into Ballot:
# a one-member etcd 3.4 (Debian's etcd-server), a few writes covering what the import must carry
# over (overwrites, deletes, a lease, a transaction with several changes in one revision, a
# compaction, enough keys for branch pages, a value larger than a page), then
# `etcdctl snapshot save`. The test checks the contents listed here; rerun only to change them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/etcd-3.4-backup.db"
dir=$(mktemp -d)
trap 'kill $etcd 2>/dev/null || true; rm -rf "$dir"' EXIT
etcd --data-dir "$dir/etcd" --listen-client-urls http://127.0.0.1:28379 \
  --advertise-client-urls http://127.0.0.1:28379 --listen-peer-urls http://127.0.0.1:28380 \
  --initial-advertise-peer-urls http://127.0.0.1:28380 \
  --initial-cluster default=http://127.0.0.1:28380 --log-level error &
etcd=$!
e() { etcdctl --endpoints 127.0.0.1:28379 "$@"; }
until e endpoint health >/dev/null 2>&1; do sleep 0.1; done
e put gone first                 # revision 2
e put kept v1                    # 3
e put kept v2                    # 4
e del gone                       # 5
lease=$(e lease grant 3600 | awk '{print $2}')
e put leased with-lease --lease="$lease"   # 6
printf '\nput txn/a A\nput txn/b B\ndel kept-missing\n\n\n' | e txn   # 7 (two puts)
e compaction 4                   # history before 4 is gone: kept@3 is compacted away
for i in $(seq 0 299); do e put "$(printf 'many/%04d' "$i")" "value-$i" >/dev/null; done  # 8..307
e put big "$(head -c 20000 /dev/zero | tr '\0' x)"   # 308
e put gone again                 # 309
# etcd's HashKV of this state, which the imported store must reproduce.
e endpoint hashkv -w json | sed -E 's/.*"hash":([0-9]+).*/\1/' > "$here/etcd-3.4-backup.hashkv"
e snapshot save "$out"

"""Checks that etcd3gw (https://pypi.org/project/etcd3gw/), a client of etcd's JSON gateway over
plain HTTP (requests), works unchanged against a cluster: Ballot or, for comparison, etcd itself.

usage: python check_gateway.py HOST:PORT[,HOST:PORT...]

Every check asserts what etcd answers; the script exits 1 if any fails. Waits are bounded polls
on the condition itself; the only timed wait is in the lease test, where time is what is tested.
"""

import sys

from harness import check, finish, until

import etcd3gw
import etcd3gw.exceptions

PREFIX = "/client-check-gateway/"


def connect(endpoint):
    host, port = endpoint.rsplit(":", 1)
    return etcd3gw.Etcd3Client(host=host, port=int(port), timeout=10)


def kv(clients, c):
    check(c.api_path == "/v3/", f"the client picks the /v3/ gateway from /version: {c.api_path}")
    for i, member in enumerate(clients):
        member.put(f"{PREFIX}member/{i}", f"via member {i}")
    via = c.get_prefix(f"{PREFIX}member/")
    check(len(via) == len(clients), f"a put through each of the {len(clients)} members is read back")

    c.put(f"{PREFIX}k", "v1")
    c.put(f"{PREFIX}k", "v2")
    [(value, meta)] = c.get(f"{PREFIX}k", metadata=True)
    check(value == b"v2" and meta["version"] == "2", f"get returns the latest value and its version: {meta}")
    check(meta["key"] == f"{PREFIX}k".encode(), "the metadata carries the decoded key")

    for key in "cab":
        c.put(f"{PREFIX}r/{key}", key)
    got = c.get_prefix(f"{PREFIX}r/", sort_order="ascend", sort_target="key")
    check([v for v, _ in got] == [b"a", b"b", b"c"], f"a prefix range sorted by key: {got}")
    check(c.get(f"{PREFIX}r/", range_end=f"{PREFIX}r/c") == [b"a", b"b"],
          "a range [a, c) excludes its end")
    check(c.get(f"{PREFIX}missing") == [], "a missing key reads as nothing")

    check(c.create(f"{PREFIX}once", "1"), "create of a new key succeeds (txn on create_revision 0)")
    check(not c.create(f"{PREFIX}once", "2"), "create of an existing key fails")
    check(c.replace(f"{PREFIX}k", "v2", "v3"), "replace with the right old value succeeds")
    check(not c.replace(f"{PREFIX}k", "wrong", "v4"), "replace with a wrong old value fails")
    check(c.get(f"{PREFIX}k") == [b"v3"], "the replaced value is read back")

    check(c.delete(f"{PREFIX}r/a"), "delete of an existing key reports it deleted")
    check(not c.delete(f"{PREFIX}r/a"), "delete of a missing key reports nothing deleted")
    check(c.delete_prefix(f"{PREFIX}r/"), "delete of a prefix")
    check(c.get_prefix(f"{PREFIX}r/") == [], "the prefix is gone")


def leases(c):
    lease = c.lease(ttl=5)
    c.put(f"{PREFIX}leased", "x", lease=lease)
    ttl = lease.ttl()
    check(0 < ttl <= 5, f"time-to-live of a 5 s lease: {ttl}")
    check(lease.keys() == [f"{PREFIX}leased".encode()], "time-to-live lists the attached key")
    check(0 < lease.refresh() <= 5, "keep-alive (the streamed /v3/lease/keepalive) answers the TTL")
    check(lease.revoke(), "revoke")
    check(c.get(f"{PREFIX}leased") == [], "revoking the lease deletes its key")

    short = c.lease(ttl=2)
    c.put(f"{PREFIX}lapsing", "x", lease=short)
    check(until(lambda: c.get(f"{PREFIX}lapsing") == []),
          "a lease that is not kept alive expires and takes its key")


def watches(c):
    events, cancel = c.watch_prefix(f"{PREFIX}w/")
    # The watch opens on its own thread: write until its first event arrives, then once more.
    c.put(f"{PREFIX}w/0", "0")
    first = next(events)
    c.put(f"{PREFIX}w/1", "1")
    c.delete(f"{PREFIX}w/0")
    second = next(events)
    third = next(events)
    cancel()
    seen = [(e.get("type", "PUT"), e["kv"]["key"]) for e in (first, second, third)]
    want = [("PUT", f"{PREFIX}w/0".encode()), ("PUT", f"{PREFIX}w/1".encode()),
            ("DELETE", f"{PREFIX}w/0".encode())]
    check(seen == want, f"watch a prefix over the streamed /v3/watch: {seen}")


def locks(c, other):
    first = c.lock(id=f"{PREFIX}lock", ttl=10)
    check(first.acquire(), "a free lock is acquired")
    second = other.lock(id=f"{PREFIX}lock", ttl=10)
    check(not second.acquire(), "a held lock is not acquired by another client")
    check(first.release(), "the holder releases the lock")
    check(second.acquire(), "after the release another client takes the lock")
    second.release()


def cluster(c, count):
    status = c.status()
    check(status["version"].startswith("3.") and int(status["leader"]) != 0,
          f"status: version {status['version']}, a leader")
    members = c.members()
    check(len(members) == count, f"member list has {len(members)} members")
    check(all(m.get("name") and m.get("peerURLs") and m.get("clientURLs") for m in members),
          "every member has a name, client and peer URLs")
    try:
        c.post(c.get_url("/kv/range"), json={"key": "Zm9v", "revision": 1 << 40})
        check(False, "a future revision is refused")
    except etcd3gw.exceptions.Etcd3Exception as err:
        check('"error":"etcdserver: mvcc: required revision is a future revision"' in err.detail_text
              and '"code":11' in err.detail_text,
              f"a future revision is refused with grpc-gateway's error body: {err.detail_text}")


def main():
    endpoints = sys.argv[1].split(",")
    clients = [connect(e) for e in endpoints]
    c = clients[0]
    try:
        c.delete_prefix(PREFIX)
        kv(clients, c)
        leases(c)
        watches(c)
        locks(c, clients[-1])
        cluster(c, len(endpoints))
        c.delete_prefix(PREFIX)
    except Exception as err:
        import traceback

        traceback.print_exc()
        check(False, f"unexpected error: {err!r}")
    return finish("gateway client")


if __name__ == "__main__":
    sys.exit(main())

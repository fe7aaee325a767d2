"""Checks that python-etcd3 (https://pypi.org/project/etcd3/, over grpcio) works unchanged
against a cluster: Ballot or, for comparison, etcd itself.

usage: python check.py HOST:PORT[,HOST:PORT...]

Every check asserts what etcd answers; the script exits 1 if any fails. Waits are bounded polls
on the condition itself; the only timed wait is in the lease test, where time is what is tested.
"""

import sys
import threading

from harness import check, finish, until

import etcd3
import etcd3.exceptions

PREFIX = "/client-check-python/"


def error_of(call):
    try:
        call()
    except Exception as err:  # the check inspects the error itself
        return err
    return None


def connect(endpoint):
    host, port = endpoint.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port))


def kv(clients, c):
    for i, member in enumerate(clients):
        member.put(f"{PREFIX}member/{i}", f"via member {i}")
    via = list(c.get_prefix(f"{PREFIX}member/"))
    check(len(via) == len(clients), f"a put through each of the {len(clients)} members is read back")

    c.put(f"{PREFIX}k", "v1")
    first = c.get(f"{PREFIX}k")[1].mod_revision
    c.put(f"{PREFIX}k", "v2")
    value, meta = c.get(f"{PREFIX}k")
    check(value == b"v2" and meta.version == 2, "get returns the latest value and its version")
    check(meta.mod_revision == first + 1, "each put adds one to the revision")

    for key, value in (("b", "2"), ("a", "1"), ("c", "3")):
        c.put(f"{PREFIX}r/{key}", value)
    keys = [m.key for _, m in c.get_prefix(f"{PREFIX}r/", sort_order="ascend", sort_target="key")]
    check(keys == [f"{PREFIX}r/{k}".encode() for k in "abc"], "a prefix range sorted by key")
    values = [v for v, _ in c.get_range(f"{PREFIX}r/a", f"{PREFIX}r/c")]
    check(values == [b"1", b"2"], "a range [a, c) excludes its end")

    check(c.delete(f"{PREFIX}r/a"), "delete of an existing key reports it deleted")
    check(not c.delete(f"{PREFIX}r/a"), "delete of a missing key reports nothing deleted")
    check(c.get(f"{PREFIX}r/a")[0] is None, "a deleted key is gone")

    check(c.replace(f"{PREFIX}k", "v2", "v3"), "replace with the right old value succeeds")
    check(not c.replace(f"{PREFIX}k", "wrong", "v4"), "replace with a wrong old value fails")
    ok, responses = c.transaction(
        compare=[c.transactions.version(f"{PREFIX}k") == 3],
        success=[c.transactions.put(f"{PREFIX}t", "1"), c.transactions.get(f"{PREFIX}k")],
        failure=[],
    )
    check(ok and responses[1][0][0] == b"v3" and c.get(f"{PREFIX}t")[0] == b"1",
          "txn: a version compare runs the success branch's put and get")

    err = error_of(lambda: c.put(f"{PREFIX}big", b"x" * (1600 * 1024)))
    check(err is not None and "etcdserver: request is too large" in str(err),
          f"a 1.6 MiB put is refused with etcd's message: {getattr(err, 'details', lambda: err)()}")
    check(c.get(f"{PREFIX}k")[0] == b"v3", "the cluster still serves after the refused request")

    c.put(f"{PREFIX}c", "x")
    at = c.get(f"{PREFIX}c")[1].mod_revision
    c.put(f"{PREFIX}c", "y")
    c.compact(at, physical=True)
    answer = c.watch_once_response(f"{PREFIX}c", timeout=5, start_revision=at - 1)
    check(isinstance(answer, etcd3.exceptions.RevisionCompactedError) and answer.compacted_revision == at,
          f"a watch below the compaction is cancelled with the compact revision: {answer!r}")


def leases(c):
    lease = c.lease(5)
    c.put(f"{PREFIX}leased", "x", lease=lease)
    check(0 < lease.remaining_ttl <= 5, f"time-to-live of a 5 s lease: {lease.remaining_ttl}")
    check(lease.keys == [f"{PREFIX}leased".encode()], "time-to-live lists the attached key")
    lease.refresh()
    lease.revoke()
    check(c.get(f"{PREFIX}leased")[0] is None, "revoking the lease deletes its key")
    check(lease.remaining_ttl == -1, "a revoked lease's TTL is -1")

    lapsing = c.lease(1)
    c.put(f"{PREFIX}lapsing", "y", lease=lapsing)
    check(until(lambda: c.get(f"{PREFIX}lapsing")[0] is None),
          "a lease that is not kept alive expires and its key is deleted")


def watches(c):
    c.put(f"{PREFIX}w/a", "0")
    start = c.get(f"{PREFIX}w/a")[1].mod_revision
    events = []
    iterator, cancel = c.watch_prefix(f"{PREFIX}w/", prev_kv=True)
    started = threading.Event()

    def consume():
        started.set()
        for event in iterator:
            events.append((type(event).__name__, event.key, event.value))
            if len(events) == 3:
                break

    thread = threading.Thread(target=consume)
    thread.start()
    started.wait(5)
    c.put(f"{PREFIX}w/a", "1")
    c.put(f"{PREFIX}w/b", "2")
    c.delete(f"{PREFIX}w/a")
    thread.join(10)
    cancel()
    want = [
        ("PutEvent", f"{PREFIX}w/a".encode(), b"1"),
        ("PutEvent", f"{PREFIX}w/b".encode(), b"2"),
        ("DeleteEvent", f"{PREFIX}w/a".encode(), b""),
    ]
    check(events == want, f"watch a prefix: {events}")

    replay = []
    iterator, cancel = c.watch(f"{PREFIX}w/a", start_revision=start)
    for event in iterator:
        replay.append(event.value)
        if len(replay) == 2:
            break
    cancel()
    check(replay == [b"0", b"1"], f"watch from a past revision replays history: {replay}")


def locks(c, other):
    first = c.lock(f"{PREFIX}lock", ttl=10)
    check(first.acquire(timeout=5), "a free lock is acquired")
    second = other.lock(f"{PREFIX}lock", ttl=10)
    check(not second.acquire(timeout=1), "a held lock is not acquired by another client")
    first.release()
    check(second.acquire(timeout=5), "after the release another client takes the lock")
    second.release()


def cluster(c, count):
    status = c.status()
    check(status.version.startswith("3.") and status.leader is not None,
          f"status: version {status.version}, leader {status.leader.name}")
    members = list(c.members)
    check(len(members) == count, f"member list has {len(members)} members")
    check(all(m.name and m.peer_urls and m.client_urls for m in members),
          "every member has a name, client and peer URLs")


def main():
    endpoints = [e for e in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if e]
    if not endpoints:
        print("usage: python check.py HOST:PORT[,HOST:PORT...]", file=sys.stderr)
        return 2
    clients = [connect(e) for e in endpoints]
    c = clients[-1]
    try:
        c.delete_prefix(PREFIX)
        kv(clients, c)
        leases(c)
        watches(c)
        locks(c, clients[0])
        cluster(c, len(endpoints))
        c.delete_prefix(PREFIX)
    except Exception as err:
        import traceback

        traceback.print_exc()
        check(False, f"unexpected error: {err!r}")
    # The clients are not closed: python-etcd3's watch thread (a daemon) reopens its stream
    # forever and prints a traceback once its channel is closed. Exiting ends it.
    return finish("python client")


if __name__ == "__main__":
    sys.exit(main())

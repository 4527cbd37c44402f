"""One contract for the ``KV`` seam, run against ``MemoryKV`` and ``EtcdKV`` on a real etcd.

The fake is only trustworthy if it behaves like etcd; every test here runs on both. Where they
disagree, the memory case is marked xfail with the exact difference (to be fixed in memory.py).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.lab.etcd_server import ETCD_BINARY, EtcdServer
from controller.model.errors import StoreUnavailable
from controller.store.etcd import EtcdKV
from controller.store.kv import (
    KV,
    MAX_READS,
    Compacted,
    Compare,
    Delete,
    DeletePrefix,
    Event,
    KeyValue,
    Put,
    Read,
    Txn,
    WatchBatch,
    WatchStream,
)
from controller.store.memory import MemoryKV

P = "/t/"


@dataclass
class Store:
    """A KV under test plus the few things only its kind can do (break it, expire leases)."""

    name: str
    kv: KV
    break_it: Callable[[], None]
    expire: Callable[[int], None]
    server: EtcdServer | None = None
    extra: list[KV] = field(default_factory=list)


@pytest.fixture(params=["memory", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        mem = MemoryKV()

        def down() -> None:
            mem.available = False

        yield Store("memory", mem, down, mem.expire_lease)
        return
    if not Path(ETCD_BINARY).exists():
        pytest.skip(f"{ETCD_BINARY} missing (apt install etcd-server)")
    server = EtcdServer(tmp_path / "etcd")
    kv = EtcdKV([server.url])
    try:
        server.start()

        def expire(lease: int) -> None:  # a real expiry: the tests grant 2 s leases
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if not [i for i in kv.list(P).items if i.lease == lease]:
                    return
                time.sleep(0.2)

        yield Store("etcd", kv, server.kill, expire, server)
    finally:
        kv.close()
        server.stop()


def put(kv: KV, key: str, value: str, lease: int = 0) -> int:
    return kv.commit(Txn(success=(Put(key, value.encode(), lease),))).revision


class Collector:
    """Iterate a watch stream in a thread; batches land in a queue; errors are kept."""

    def __init__(self, stream: WatchStream) -> None:
        self.stream = stream
        self.batches: queue.Queue[WatchBatch] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for b in self.stream:
                self.batches.put(b)
        except BaseException as exc:
            self.error = exc

    def events(self, n: int, timeout: float = 5.0) -> list[Event]:
        """The next ``n`` events (progress notifications skipped)."""
        out: list[Event] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            try:
                b = self.batches.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"got {len(out)}/{n} events; error={self.error!r}") from None
            out.extend(b.events)
        return out

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(5)
        assert not self.thread.is_alive(), "cancel() did not end the iteration"


def test_get_and_sorted_consistent_list(store: Store) -> None:
    kv = store.kv
    assert kv.get(P + "missing") is None
    r1 = put(kv, P + "b", "1")
    r2 = put(kv, P + "a", "2")
    r3 = put(kv, P + "b", "3")
    put(kv, "/other/x", "ignored")
    assert r1 < r2 < r3
    b = kv.get(P + "b")
    assert b == KeyValue(P + "b", b"3", r1, r3, 2, 0)
    listing = kv.list(P)
    assert [i.key for i in listing.items] == [P + "a", P + "b"]
    assert listing.revision == kv.list("/").revision >= r3
    assert kv.list(P + "zzz").items == ()


def test_read_many_ranges_at_one_revision(store: Store) -> None:
    kv = store.kv
    put(kv, P + "b", "1")
    put(kv, P + "a/x", "2")
    put(kv, P + "a/y", "3")
    put(kv, P + "ab", "4")
    got = kv.read(
        [
            Read(P + "b"),
            Read(P + "missing"),
            Read(P + "a/", prefix=True),
            Read(P + "q/", prefix=True),
        ]
    )
    assert [[i.key for i in g.items] for g in got] == [[P + "b"], [], [P + "a/x", P + "a/y"], []]
    assert got[0].items[0] == kv.get(P + "b")
    assert got[2].items == kv.list(P + "a/").items
    assert len({g.revision for g in got}) == 1
    assert got[0].revision == kv.list("/").revision
    assert kv.read([]) == ()
    assert len(kv.read([Read(P + "b")] * MAX_READS)) == MAX_READS
    with pytest.raises(ValueError, match="at most"):
        kv.read([Read(P + "b")] * (MAX_READS + 1))


def test_list_at_past_revision(store: Store) -> None:
    kv = store.kv
    r1 = put(kv, P + "a", "1")
    r2 = put(kv, P + "b", "2")
    put(kv, P + "a", "changed")
    kv.commit(Txn(success=(Delete(P + "b"),)))
    past = kv.list(P, r2)
    assert past.revision == r2
    assert [(i.key, i.value) for i in past.items] == [(P + "a", b"1"), (P + "b", b"2")]
    assert [i.key for i in kv.list(P, r1).items] == [P + "a"]
    assert [(i.key, i.value) for i in kv.list(P).items] == [(P + "a", b"changed")]


def test_txn_compares(store: Store) -> None:
    kv = store.kv
    k = P + "guard"
    absent = Compare(k, "create", "=", 0)
    first = kv.commit(Txn((absent,), (Put(k, b"v1"),)))
    assert first.succeeded
    assert not kv.commit(Txn((absent,), (Put(k, b"v2"),))).succeeded
    item = kv.get(k)
    assert item is not None and item.value == b"v1"
    assert kv.commit(Txn((Compare(k, "mod", "=", item.mod_revision),), (Put(k, b"v2"),))).succeeded
    stale = Compare(k, "mod", "=", item.mod_revision)
    assert not kv.commit(Txn((stale,), (Put(k, b"v3"),))).succeeded
    assert kv.commit(Txn((Compare(k, "value", "=", b"v2"),), (Put(k, b"v3"),))).succeeded
    assert not kv.commit(Txn((Compare(k, "value", "=", b"v2"),), (Put(k, b"v4"),))).succeeded
    assert kv.commit(Txn((Compare(k, "value", "!=", b"v2"),), ())).succeeded
    assert kv.commit(Txn((Compare(k, "version", "=", 3),), ())).succeeded
    assert kv.commit(Txn((Compare(k, "version", ">", 1),), ())).succeeded
    assert kv.commit(Txn((Compare(k, "mod", "<", 10**9),), ())).succeeded
    got = kv.get(k)
    assert got is not None and got.value == b"v3" and got.version == 3


def test_txn_is_atomic(store: Store) -> None:
    kv = store.kv
    put(kv, P + "x", "old")
    ok = kv.commit(
        Txn(
            (Compare(P + "flag", "create", "=", 0),),
            (Put(P + "n1", b"a"), Put(P + "n2", b"b"), Delete(P + "x")),
            (Put(P + "failed", b"1"),),
        )
    )
    assert ok.succeeded
    items = kv.list(P).items
    assert [i.key for i in items] == [P + "n1", P + "n2"]
    assert {i.mod_revision for i in items} == {ok.revision}  # one revision for the whole txn
    put(kv, P + "flag", "set")
    before = kv.list(P)
    bad = kv.commit(
        Txn(
            (Compare(P + "flag", "create", "=", 0),),
            (Put(P + "n3", b"c"), DeletePrefix(P + "n1")),
            (Put(P + "failed", b"1"),),
        )
    )
    assert not bad.succeeded
    after = kv.list(P)
    assert {i.key for i in after.items} == {i.key for i in before.items} | {P + "failed"}
    assert after.revision == before.revision + 1


def test_txn_rejects_overlapping_ops(store: Store) -> None:
    """etcd refuses a transaction branch that both puts and deletes the same key (INVALID_ARGUMENT
    "duplicate key given in txn request"), and applies nothing."""
    kv = store.kv
    put(kv, P + "a", "1")
    before = kv.list(P)
    with pytest.raises(StoreUnavailable, match="duplicate key"):
        kv.commit(Txn(success=(Put(P + "a", b"2"), DeletePrefix(P))))
    assert kv.list(P) == before


def test_delete_prefix(store: Store) -> None:
    kv = store.kv
    for k in ("a/1", "a/2", "a/3/deep", "ab", "b"):
        put(kv, P + k, k)
    r = kv.commit(Txn(success=(DeletePrefix(P + "a/"),)))
    assert r.succeeded
    assert [i.key for i in kv.list(P).items] == [P + "ab", P + "b"]
    assert kv.list(P).revision == r.revision


def test_lease_refresh_and_revoke(store: Store) -> None:
    kv = store.kv
    lease = kv.grant_lease(30)
    put(kv, P + "leased", "x", lease)
    put(kv, P + "plain", "y")
    item = kv.get(P + "leased")
    assert item is not None and item.lease == lease
    assert 0 < kv.refresh_lease(lease) <= 30
    kv.revoke_lease(lease)
    assert [i.key for i in kv.list(P).items] == [P + "plain"]
    assert kv.refresh_lease(lease) <= 0
    kv.revoke_lease(lease)  # idempotent


def test_lease_expiry_deletes_keys(store: Store) -> None:
    kv = store.kv
    lease = kv.grant_lease(2)
    put(kv, P + "leased", "x", lease)
    store.expire(lease)
    assert kv.get(P + "leased") is None
    assert kv.refresh_lease(lease) <= 0


def test_watch_replays_history_then_live(store: Store) -> None:
    kv = store.kv
    r1 = put(kv, P + "a", "1")
    r2 = kv.commit(Txn(success=(Put(P + "b", b"2"), Put(P + "c", b"3")))).revision
    r3 = kv.commit(Txn(success=(Delete(P + "a"),))).revision
    put(kv, "/elsewhere", "no")
    c = Collector(kv.watch(P, r1))
    try:
        history = c.events(4)
        assert history == [
            Event("put", KeyValue(P + "a", b"1", r1, r1, 1, 0)),
            Event("put", KeyValue(P + "b", b"2", r2, r2, 1, 0)),
            Event("put", KeyValue(P + "c", b"3", r2, r2, 1, 0)),
            Event("delete", KeyValue(P + "a", b"", 0, r3, 0)),
        ]
        r4 = put(kv, P + "b", "live")
        r5 = kv.commit(Txn(success=(DeletePrefix(P),))).revision
        live = c.events(3)
        assert live == [
            Event("put", KeyValue(P + "b", b"live", r2, r4, 2, 0)),
            Event("delete", KeyValue(P + "b", b"", 0, r5, 0)),
            Event("delete", KeyValue(P + "c", b"", 0, r5, 0)),
        ]
    finally:
        c.close()


def test_watch_batches_one_txn_together(store: Store) -> None:
    kv = store.kv
    start = kv.list(P).revision + 1
    c = Collector(kv.watch(P, start))
    try:
        r = kv.commit(Txn(success=(Put(P + "x", b"1"), Put(P + "y", b"2")))).revision
        deadline = time.monotonic() + 5
        while True:
            b = c.batches.get(timeout=max(0.01, deadline - time.monotonic()))
            if b.events:
                break
        assert [e.kv.key for e in b.events] == [P + "x", P + "y"]
        assert b.revision == r
    finally:
        c.close()


def _watch_error(kv: KV, start: int) -> BaseException | None:
    try:
        stream = kv.watch(P, start)
    except (Compacted, StoreUnavailable) as exc:
        return exc
    c = Collector(stream)
    c.thread.join(5)
    if c.thread.is_alive():
        c.close()
        return None
    return c.error


def test_compaction(store: Store) -> None:
    kv = store.kv
    r1 = put(kv, P + "a", "1")
    put(kv, P + "a", "2")
    r3 = put(kv, P + "b", "3")
    kv.compact(r3)
    kv.compact(r3)  # idempotent
    err = _watch_error(kv, r1)
    assert isinstance(err, Compacted), err
    with pytest.raises(Compacted):
        kv.list(P, r1)
    # after compaction, reading and watching from just after the compaction point still work
    assert [i.value for i in kv.list(P).items] == [b"2", b"3"]
    r4 = put(kv, P + "c", "4")
    c = Collector(kv.watch(P, r3 + 1))
    try:
        assert [e.kv.mod_revision for e in c.events(1)] == [r4]
    finally:
        c.close()


def test_compaction_boundary(store: Store) -> None:
    """Watching from the compaction point raises ``Compacted`` (etcd itself would accept it but
    has dropped the deletions made at that revision; EtcdKV makes it strict). Listing at the
    compaction point is accurate, and etcd allows it (mvcc refuses only ``rev < compacted``)."""
    kv = store.kv
    put(kv, P + "a", "1")
    put(kv, P + "b", "2")
    r3 = kv.commit(Txn(success=(Delete(P + "a"),))).revision
    kv.compact(r3)
    err = _watch_error(kv, r3)
    assert isinstance(err, Compacted), err
    assert [i.key for i in kv.list(P, r3).items] == [P + "b"]


def test_compact_future_revision_is_refused(store: Store) -> None:
    """etcd refuses to compact past its current revision ("required revision is a future
    revision"); EtcdKV reports that as StoreUnavailable and nothing is compacted."""
    kv = store.kv
    r1 = put(kv, P + "a", "1")
    with pytest.raises(StoreUnavailable, match="future revision"):
        kv.compact(r1 + 100)
    assert kv.list(P, r1).revision == r1


def test_progress_notifications(store: Store) -> None:
    """An idle watch gets empty batches carrying the current revision (etcd server run with
    --experimental-watch-progress-notify-interval=1s by EtcdServer)."""
    kv = store.kv
    rev = put(kv, "/outside", "moves the revision")
    c = Collector(kv.watch(P, 1))
    try:
        b = c.batches.get(timeout=5)
        assert b.events == () and b.revision == rev
    finally:
        c.close()


def test_cancel_ends_iteration(store: Store) -> None:
    kv = store.kv
    c = Collector(kv.watch(P, kv.list(P).revision + 1))
    time.sleep(0.2)
    c.close()
    assert c.error is None


def test_store_down(store: Store) -> None:
    kv = store.kv
    put(kv, P + "a", "1")
    c = Collector(kv.watch(P, kv.list(P).revision + 1))
    time.sleep(0.2)
    store.break_it()
    c.thread.join(10)
    assert not c.thread.is_alive()
    assert isinstance(c.error, StoreUnavailable), c.error
    for call in (
        lambda: kv.get(P + "a"),
        lambda: kv.list(P),
        lambda: put(kv, P + "b", "2"),
        lambda: kv.grant_lease(5),
        lambda: kv.watch(P, 1),
    ):
        with pytest.raises(StoreUnavailable):
            call()


def test_etcd_fails_over_to_a_live_url(store: Store) -> None:
    """With several URLs, a dead one costs at most one failed call (then it is skipped for
    ``time_retry``), and errors name the URLs."""
    if store.server is None:
        pytest.skip("failover is an EtcdKV property")
    kv = EtcdKV(["http://127.0.0.1:1", store.server.url], timeout=2.0)
    try:
        failures = 0
        for i in range(6):
            try:
                put(kv, P + "f", str(i))
            except StoreUnavailable as exc:
                assert "127.0.0.1:1" in str(exc)
                failures += 1
        assert failures <= 1
        got = kv.get(P + "f")
        assert got is not None and got.value == b"5"
    finally:
        kv.close()

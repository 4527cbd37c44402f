"""Cache and Watcher on the in-memory store: decoding, skipping bad values, waking consumers,
re-listing after compaction and recovering from an outage."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from controller.model import codec
from controller.model.records import Alive, Endpoint, Host, Network
from controller.store import keys
from controller.store.cache import Cache
from controller.store.kv import Delete, Event, KeyValue, Listing, Put, Txn, WatchBatch
from controller.store.memory import MemoryKV
from controller.store.watcher import Watcher

NET = Network("blue", 100, "10.1.0.0/24")
EP = Endpoint("ep1", "blue", "h1", "10.1.0.5", "02:00:0a:01:00:05")
HOST = Host("h1", "192.0.2.1")


def kv_(key: str, value: str | bytes, rev: int) -> KeyValue:
    raw = value.encode() if isinstance(value, str) else value
    return KeyValue(key, raw, rev, rev)


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- Cache ------------------------------------------------------------------------------------
def test_cache_decodes_all_collections() -> None:
    c = Cache()
    changed = c.replace_all(
        Listing(
            (
                kv_(keys.network("blue"), codec.encode_network(NET), 2),
                kv_(keys.endpoint("blue", "ep1"), codec.encode_endpoint(EP), 3),
                kv_(keys.host("h1"), codec.encode_host(HOST), 4),
                kv_(keys.alive("h1"), codec.encode_alive(Alive(1.0, 42)), 5),
                kv_(keys.vni(100), codec.encode_owner("blue"), 2),  # not mirrored
                kv_(keys.status("h1"), b"whatever", 6),  # not mirrored
            ),
            6,
        )
    )
    assert changed
    s = c.snapshot()
    assert s.revision == 6 and c.revision == 6
    assert dict(s.networks) == {"blue": NET}
    assert dict(s.endpoints) == {("blue", "ep1"): EP}
    assert dict(s.hosts) == {"h1": HOST}
    assert s.alive == frozenset({"h1"}) and s.skipped == ()
    assert c.snapshot() is s  # cheap: no rebuild without a change


def test_bad_values_are_skipped_and_counted() -> None:
    c = Cache()
    wrong_name = codec.encode_network(Network("red", 5, "10.2.0.0/24"))
    batch = WatchBatch(
        (
            Event("put", kv_(keys.network("blue"), b"{not json", 2)),
            Event("put", kv_(keys.network("green"), wrong_name, 3)),
            Event("put", kv_(keys.ENDPOINTS + "blue", codec.encode_endpoint(EP), 4)),
            Event("put", kv_(keys.host("h1"), codec.encode_host(HOST), 5)),
        ),
        5,
    )
    assert c.apply(batch)
    assert c.invalid_records == 3 and c.events_applied == 4
    assert set(c.skipped) == {
        keys.network("blue"),
        keys.network("green"),
        keys.ENDPOINTS + "blue",
    }
    assert "disagrees" in c.skipped[keys.network("green")]
    s = c.snapshot()
    assert dict(s.hosts) == {"h1": HOST} and not s.networks
    assert len(s.skipped) == 3 and s.skipped[0].startswith(keys.ENDPOINTS + "blue: ")
    # fixing the value clears the skip
    fixed = WatchBatch((Event("put", kv_(keys.network("blue"), codec.encode_network(NET), 6)),), 6)
    assert c.apply(fixed)
    assert keys.network("blue") not in c.skipped and c.snapshot().networks["blue"] == NET


def test_apply_is_idempotent_and_deletes() -> None:
    c = Cache()
    put = WatchBatch((Event("put", kv_(keys.host("h1"), codec.encode_host(HOST), 2)),), 2)
    assert c.apply(put)
    assert not c.apply(put)  # replayed after a resume: ignored
    assert not c.apply(WatchBatch((), 9))  # progress: revision only, nobody woken
    assert c.revision == 9 and c.snapshot().revision == 9
    gone = WatchBatch((Event("delete", KeyValue(keys.host("h1"), b"", 0, 10, 0)),), 10)
    assert c.apply(gone)
    assert not c.snapshot().hosts and c.mod_revisions() == {}


def test_same_record_rewritten_does_not_wake() -> None:
    c = Cache()
    c.apply(WatchBatch((Event("put", kv_(keys.host("h1"), codec.encode_host(HOST), 2)),), 2))
    again = WatchBatch((Event("put", kv_(keys.host("h1"), codec.encode_host(HOST), 3)),), 3)
    assert not c.apply(again)
    assert c.mod_revisions() == {keys.host("h1"): 3}


def test_replace_all_diffs() -> None:
    c = Cache()
    host = kv_(keys.host("h1"), codec.encode_host(HOST), 2)
    net = kv_(keys.network("blue"), codec.encode_network(NET), 3)
    assert c.replace_all(Listing((host, net), 3))
    assert not c.replace_all(Listing((host, net), 7))  # nothing changed: nobody woken
    assert c.revision == 7
    assert c.replace_all(Listing((host,), 8))  # the network was deleted meanwhile
    assert not c.snapshot().networks and c.snapshot().hosts


def test_snapshot_is_immutable() -> None:
    c = Cache()
    c.apply(WatchBatch((Event("put", kv_(keys.host("h1"), codec.encode_host(HOST), 2)),), 2))
    s = c.snapshot()
    with pytest.raises(TypeError):
        s.hosts["x"] = HOST  # type: ignore[index]
    c.apply(WatchBatch((Event("delete", KeyValue(keys.host("h1"), b"", 0, 3, 0)),), 3))
    assert "h1" in s.hosts and "h1" not in c.snapshot().hosts


# -- Watcher ----------------------------------------------------------------------------------
class Woken:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.count += 1


@pytest.fixture
def mem() -> MemoryKV:
    return MemoryKV()


@pytest.fixture
def running(mem: MemoryKV) -> Iterator[tuple[Watcher, Cache, Woken]]:
    cache, woken = Cache(), Woken()
    w = Watcher(lambda: mem, keys.ROOT, cache, woken, initial_backoff=0.01, max_backoff=0.6)
    w.start()
    try:
        assert w.wait_synced(5)
        yield w, cache, woken
    finally:
        w.stop()


def put(mem: MemoryKV, key: str, value: str | bytes) -> int:
    raw = value.encode() if isinstance(value, str) else value
    return mem.commit(Txn(success=(Put(key, raw),))).revision


def test_watcher_follows_and_wakes(mem: MemoryKV, running: tuple[Watcher, Cache, Woken]) -> None:
    w, cache, woken = running
    rev = put(mem, keys.host("h1"), codec.encode_host(HOST))
    wait_for(lambda: cache.revision >= rev)
    assert cache.snapshot().hosts == {"h1": HOST} and woken.count >= 1
    before = woken.count
    put(mem, keys.status("h1"), "ignored")  # not mirrored: no wake-up
    put(mem, keys.network("bad"), "{")
    wait_for(lambda: keys.network("bad") in cache.skipped)
    assert cache.invalid_records == 1 and woken.count == before + 1
    assert w.connected and w.last_error is None


def test_watcher_recovers_from_outage(mem: MemoryKV, running: tuple[Watcher, Cache, Woken]) -> None:
    w, cache, _ = running
    put(mem, keys.host("h1"), codec.encode_host(HOST))
    wait_for(lambda: "h1" in cache.snapshot().hosts)
    mem.available = False
    wait_for(lambda: not w.connected)
    time.sleep(0.5)
    assert w.last_error is not None and w.failures >= 1
    mem.available = True
    rev = put(mem, keys.host("h2"), codec.encode_host(Host("h2", "192.0.2.2")))
    wait_for(lambda: w.connected and cache.revision >= rev, 5)
    assert set(cache.snapshot().hosts) == {"h1", "h2"}
    assert w.reconnects >= 1 and w.last_error is None


def test_watcher_relists_after_compaction(mem: MemoryKV) -> None:
    dead = MemoryKV()
    dead.available = False
    reachable = threading.Event()
    reachable.set()
    cache = Cache()
    w = Watcher(
        lambda: mem if reachable.is_set() else dead, keys.ROOT, cache, Woken(),
        initial_backoff=0.01, max_backoff=0.3,
    )  # fmt: skip
    w.start()
    try:
        assert w.wait_synced(5)
        for i in range(5):
            put(mem, keys.host(f"h{i}"), codec.encode_host(Host(f"h{i}", f"192.0.2.{i + 1}")))
        wait_for(lambda: len(cache.snapshot().hosts) == 5)
        relists = cache.relists
        reachable.clear()  # cut the watcher off, then break its open stream
        mem.available = False
        wait_for(lambda: not w.connected)
        mem.available = True
        mem.commit(Txn(success=(Delete(keys.host("h0")), Delete(keys.host("h1")))))
        rev = put(mem, keys.host("h9"), codec.encode_host(Host("h9", "192.0.2.99")))
        mem.compact(rev)
        reachable.set()
        wait_for(lambda: cache.revision >= rev, 5)
        assert set(cache.snapshot().hosts) == {"h2", "h3", "h4", "h9"}
        assert cache.relists == relists + 1
    finally:
        w.stop()


def test_stop_is_prompt_during_backoff(mem: MemoryKV) -> None:
    mem.available = False
    w = Watcher(lambda: mem, keys.ROOT, Cache(), lambda: None, initial_backoff=5, max_backoff=5)
    w.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    w.stop()
    assert time.monotonic() - t0 < 1.0
    assert not w.wait_synced(0)


def test_on_change_errors_do_not_kill_the_watcher(mem: MemoryKV) -> None:
    def boom() -> None:
        raise RuntimeError("consumer bug")

    cache = Cache()
    w = Watcher(lambda: mem, keys.ROOT, cache, boom)
    w.start()
    try:
        assert w.wait_synced(5)
        rev = put(mem, keys.host("h1"), codec.encode_host(HOST))
        wait_for(lambda: cache.revision >= rev)
        rev = put(mem, keys.host("h2"), codec.encode_host(Host("h2", "192.0.2.2")))
        wait_for(lambda: cache.revision >= rev)
        assert w.connected
    finally:
        w.stop()

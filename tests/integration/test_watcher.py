"""The watcher + cache against a real etcd under chaos: the cache must end equal to etcd.

Scenarios: etcd SIGKILLed and restarted under a writer; etcd frozen (SIGSTOP) longer than the
gRPC keepalive; history compacted past the watcher's revision while it was cut off; and no busy
loop while etcd is down.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from controller.lab.etcd_server import EtcdServer
from controller.model import codec
from controller.model.errors import StoreUnavailable
from controller.model.records import Host
from controller.store import keys
from controller.store.cache import Cache
from controller.store.etcd import EtcdKV
from controller.store.kv import KV, Delete, Put, Txn
from controller.store.watcher import Watcher

NAMES = [f"h{i}" for i in range(40)]


def host_value(name: str, n: int) -> bytes:
    return codec.encode_host(Host(name, f"10.0.{n % 250}.{1 + n % 200}")).encode()


class Writer:
    """Changes random host records (put or delete) every ``interval`` until stopped; rides out
    outages (errors are counted, not raised)."""

    def __init__(self, url: str, interval: float = 0.02) -> None:
        self.kv = EtcdKV([url], timeout=2.0)
        self.interval = interval
        self.stop_event = threading.Event()
        self.writes = 0
        self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rnd = random.Random(7)
        n = 0
        while not self.stop_event.wait(self.interval):
            name = rnd.choice(NAMES)
            n += 1
            op: Put | Delete
            op = (
                Delete(keys.host(name)) if n % 4 == 0 else Put(keys.host(name), host_value(name, n))
            )
            try:
                self.kv.commit(Txn(success=(op,)))
                self.writes += 1
            except StoreUnavailable:
                self.errors += 1

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(10)
        self.kv.close()


def etcd_state(kv: KV) -> dict[str, int]:
    return {
        i.key: i.mod_revision
        for i in kv.list(keys.ROOT).items
        if keys.kind_of(i.key) in ("networks", "endpoints", "hosts", "alive")
    }


def assert_converges(cache: Cache, kv: KV, timeout: float = 15.0) -> None:
    """The cache ends equal to a fresh listing of etcd: same keys, same mod_revisions, and the
    snapshot's decoded hosts equal the decoded listing."""
    deadline = time.monotonic() + timeout
    while True:
        want = etcd_state(kv)
        if cache.mod_revisions() == want:
            break
        if time.monotonic() > deadline:
            got = cache.mod_revisions()
            missing = sorted(set(want) - set(got))
            extra = sorted(set(got) - set(want))
            stale = sorted(k for k in set(want) & set(got) if want[k] != got[k])
            raise AssertionError(f"cache != etcd: missing={missing} extra={extra} stale={stale}")
        time.sleep(0.1)
    listing = kv.list(keys.HOSTS)
    decoded = {i.key.rsplit("/", 1)[1]: codec.decode_host(i.value) for i in listing.items}
    assert dict(cache.snapshot().hosts) == decoded


@pytest.fixture
def watched(etcd_server: EtcdServer) -> Iterator[tuple[Watcher, Cache, list[int]]]:
    cache = Cache()
    changes: list[int] = []
    watcher = Watcher(
        lambda: EtcdKV([etcd_server.url]), keys.ROOT, cache, lambda: changes.append(1),
        max_backoff=2.0,
    )  # fmt: skip
    watcher.start()
    try:
        assert watcher.wait_synced(10), watcher.last_error
        yield watcher, cache, changes
    finally:
        watcher.stop()


def wait_for(cond: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``cond()`` held; AssertionError after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - t0


def test_kill_and_restart_under_writes(
    etcd_server: EtcdServer, etcd_kv: EtcdKV, watched: tuple[Watcher, Cache, list[int]]
) -> None:
    watcher, cache, changes = watched
    with Writer(etcd_server.url) as w:
        time.sleep(1.0)
        etcd_server.kill()
        wait_for(lambda: not watcher.connected, 5)
        time.sleep(1.0)
        etcd_server.start()
        time.sleep(2.0)
    assert w.writes > 50
    assert_converges(cache, etcd_kv)
    assert watcher.connected and watcher.reconnects >= 1
    assert changes and cache.invalid_records == 0


def test_frozen_etcd_is_detected_and_recovered(
    etcd_server: EtcdServer, etcd_kv: EtcdKV, watched: tuple[Watcher, Cache, list[int]]
) -> None:
    watcher, cache, _ = watched
    with Writer(etcd_server.url) as w:
        time.sleep(0.5)
        assert watcher.connected
        etcd_server.freeze()
        frozen_at = time.monotonic()
        try:
            detected = wait_for(lambda: not watcher.connected, 20)
            time.sleep(max(0.0, frozen_at + 9.0 - time.monotonic()))  # longer than keepalive
        finally:
            etcd_server.thaw()
        print(f"frozen etcd detected after {detected:.1f}s")
        time.sleep(1.5)
    assert detected <= 16  # keepalive 10 s + ping timeout 5 s, at worst
    assert w.writes > 20
    wait_for(lambda: watcher.connected, 10)
    assert_converges(cache, etcd_kv)


def test_compaction_while_cut_off_relists(etcd_server: EtcdServer, etcd_kv: EtcdKV) -> None:
    for i, name in enumerate(NAMES):
        etcd_kv.commit(Txn(success=(Put(keys.host(name), host_value(name, i)),)))
    reachable = threading.Event()
    reachable.set()
    dead_url = "http://127.0.0.1:1"  # nothing listens there: a partition, seen from the watcher

    def factory() -> KV:
        return EtcdKV([etcd_server.url if reachable.is_set() else dead_url], timeout=2.0)

    cache = Cache()
    watcher = Watcher(factory, keys.ROOT, cache, lambda: None, max_backoff=1.0)
    watcher.start()
    try:
        assert watcher.wait_synced(10)
        assert_converges(cache, etcd_kv)
        before = cache.revision
        relists = cache.relists
        reachable.clear()
        etcd_server.kill()  # break the open stream; new sessions go to the dead URL
        etcd_server.start()
        wait_for(lambda: not watcher.connected, 5)
        for i, name in enumerate(NAMES):
            if i % 3 == 0:
                etcd_kv.commit(Txn(success=(Delete(keys.host(name)),)))
            else:
                etcd_kv.commit(Txn(success=(Put(keys.host(name), host_value(name, 1000 + i)),)))
        etcd_kv.compact(etcd_kv.list(keys.ROOT).revision)
        reachable.set()
        assert_converges(cache, etcd_kv)
        assert cache.relists > relists and cache.revision > before
        assert len(cache.snapshot().hosts) == len(NAMES) - len(NAMES[::3])
    finally:
        watcher.stop()


def test_no_busy_loop_while_etcd_is_down(
    etcd_server: EtcdServer, watched: tuple[Watcher, Cache, list[int]]
) -> None:
    watcher, _, _ = watched
    etcd_server.kill()
    wait_for(lambda: not watcher.connected, 5)
    failures = watcher.failures
    cpu0, t0 = time.process_time(), time.monotonic()
    time.sleep(5.0)
    cpu = time.process_time() - cpu0
    elapsed = time.monotonic() - t0
    attempts = watcher.failures - failures
    print(f"CPU while etcd down: {cpu:.3f}s over {elapsed:.1f}s; {attempts} attempts")
    assert cpu < 0.5
    assert 1 <= attempts <= 20
    assert watcher.last_error is not None and not watcher.connected
    etcd_server.start()
    wait_for(lambda: watcher.connected, 10)

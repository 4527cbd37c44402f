"""Interest on the in-memory store: an agent follows only its own networks, sees the same host
view as one following everything, is not woken by other networks' changes, and switches from
the unscoped watch to the scoped ones live when ``heddle store upgrade`` completes the index."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.desired import DesiredState
from controller.model import codec
from controller.model.records import Alive, Endpoint, Host, Network
from controller.model.view import host_view
from controller.store import keys
from controller.store.cache import Cache
from controller.store.interest import Interest
from controller.store.memory import MemoryKV
from controller.store.upgrade import upgrade

HOSTS = ("h1", "h2", "h3")


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Woken:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


def settled(woken: Woken, quiet: float = 0.2) -> int:
    """The wake-up count once no wake-up came for ``quiet`` s (the start-up's last ones, from
    watches that synced at the same time, may arrive just after ``wait_synced``)."""
    while True:
        seen = woken.count
        time.sleep(quiet)
        if woken.count == seen:
            return seen


def host(name: str) -> Host:
    return Host(name, f"192.0.2.{HOSTS.index(name) + 1}")


@pytest.fixture
def mem() -> MemoryKV:
    kv = MemoryKV()
    for h in HOSTS:
        kv.put_raw(keys.host(h), codec.encode_host(host(h)))
        kv.put_raw(keys.alive(h), codec.encode_alive(Alive(1.0, 1)))
    return kv


@pytest.fixture
def follow(mem: MemoryKV) -> Iterator[Callable[[str], tuple[Interest, Woken]]]:
    started: list[Interest] = []

    def start(name: str) -> tuple[Interest, Woken]:
        woken = Woken()
        interest = Interest(lambda: mem, name, woken, initial_backoff=0.01, max_backoff=0.5)
        interest.start()
        started.append(interest)
        assert interest.wait_synced(5)
        return interest, woken

    yield start
    for i in started:
        i.stop()


def full_view(mem: MemoryKV, name: str) -> object:
    cache = Cache()
    cache.replace_all(mem.list(keys.ROOT))
    return host_view(cache.snapshot(), host(name)).networks


def scoped_view(interest: Interest, name: str) -> object:
    return host_view(interest.snapshot(), host(name)).networks


def test_writers_put_and_remove_placement_keys(mem: MemoryKV) -> None:
    ds = DesiredState(mem)
    ds.create_network("blue", "10.1.0.0/24")
    a = ds.create_endpoint("blue", "h1")
    b = ds.create_endpoint("blue", "h2")
    placed = {i.key: codec.decode_placement(i.value) for i in mem.list(keys.PLACEMENT).items}
    assert placed == {
        keys.placement("h1", "blue", a.id): (None, "eth0"),
        keys.placement("h2", "blue", b.id): (None, "eth0"),
    }
    ds.remove_endpoint("blue", a.id)
    assert {i.key for i in mem.list(keys.PLACEMENT).items} == {keys.placement("h2", "blue", b.id)}
    ds.remove_network("blue", force=True)
    assert mem.list(keys.PLACEMENT).items == ()


def test_an_agent_follows_only_its_networks_and_is_not_woken_by_others(
    mem: MemoryKV, follow: Callable[[str], tuple[Interest, Woken]]
) -> None:
    ds = DesiredState(mem)
    for net, subnet in (("blue", "10.1.0.0/24"), ("red", "10.2.0.0/24")):
        ds.create_network(net, subnet)
    ds.create_endpoint("blue", "h1")
    ds.create_endpoint("blue", "h2")
    ds.create_endpoint("red", "h2")
    upgrade(mem)
    interest, woken = follow("h1")
    assert interest.scoped and interest.following == 1
    assert scoped_view(interest, "h1") == full_view(mem, "h1")
    snap = interest.snapshot()
    assert {n for n, _ in snap.endpoints} == {"blue"}  # red's endpoints never reach h1
    before = settled(woken)
    snap = interest.snapshot()
    for _ in range(20):
        ds.create_endpoint("red", "h3")
    time.sleep(0.3)
    assert woken.count == before
    assert interest.snapshot() is snap
    # a change in blue wakes it and is in the next snapshot
    ds.create_endpoint("blue", "h3")
    wait_for(lambda: woken.count > before)
    wait_for(lambda: scoped_view(interest, "h1") == full_view(mem, "h1"))


def test_a_new_network_is_followed_and_a_left_one_dropped(
    mem: MemoryKV, follow: Callable[[str], tuple[Interest, Woken]]
) -> None:
    ds = DesiredState(mem)
    ds.create_network("blue", "10.1.0.0/24")
    ds.create_network("red", "10.2.0.0/24")
    ds.create_endpoint("red", "h2")
    upgrade(mem)
    interest, _ = follow("h1")
    assert interest.following == 0 and scoped_view(interest, "h1") == ()
    ep = ds.create_endpoint("red", "h1")
    wait_for(lambda: interest.following == 1)
    wait_for(lambda: scoped_view(interest, "h1") == full_view(mem, "h1") != ())
    ds.remove_endpoint("red", ep.id)
    wait_for(lambda: interest.following == 0 and scoped_view(interest, "h1") == ())


def test_a_network_left_and_followed_again_is_seen_afresh(
    mem: MemoryKV, follow: Callable[[str], tuple[Interest, Woken]]
) -> None:
    """Leaving a network and following it again between two snapshots: the new watch's cache
    counts its versions from zero again, and must not be taken for the old one."""
    ds = DesiredState(mem)
    ds.create_network("red", "10.2.0.0/24")
    upgrade(mem)
    interest, _ = follow("h1")
    first = ds.create_endpoint("red", "h1")
    wait_for(lambda: scoped_view(interest, "h1") == full_view(mem, "h1") != ())
    ds.remove_endpoint("red", first.id)
    wait_for(lambda: interest.following == 0)  # no snapshot taken meanwhile
    second = ds.create_endpoint("red", "h1")  # its cache's first listing: version 1 again
    wait_for(lambda: interest.following == 1)
    wait_for(lambda: second.id in str(scoped_view(interest, "h1")))
    assert scoped_view(interest, "h1") == full_view(mem, "h1")


def test_an_unindexed_store_is_followed_whole_until_upgraded_then_scoped_live(
    mem: MemoryKV, follow: Callable[[str], tuple[Interest, Woken]]
) -> None:
    """A store written by an older release: endpoints without placement keys."""
    ds = DesiredState(mem)
    ds.create_network("blue", "10.1.0.0/24")
    ds.create_network("red", "10.2.0.0/24")
    for net, h, last in (("blue", "h1", 5), ("blue", "h2", 6), ("red", "h3", 7)):
        ip = f"10.{1 if net == 'blue' else 2}.0.{last}"
        ep = Endpoint(f"e{last}", net, h, ip, f"02:00:0a:00:00:{last:02x}")
        mem.put_raw(keys.endpoint(net, ep.id), codec.encode_endpoint(ep))
    mem.put_raw(keys.placement("h1", "red", "gone"), b"")  # stale: no such endpoint
    interest, _ = follow("h1")
    assert not interest.scoped and interest.following == 0
    unscoped = scoped_view(interest, "h1")
    assert unscoped == full_view(mem, "h1") != ()
    report = upgrade(mem)
    assert (report.indexed, report.removed, report.layout_written) == (3, 1, True)
    wait_for(lambda: interest.scoped)
    assert interest.following == 1
    assert scoped_view(interest, "h1") == unscoped
    again = upgrade(mem)
    assert (again.indexed, again.removed, again.already, again.layout_written) == (0, 0, 3, False)
    says = {codec.decode_placement(i.value) for i in mem.list(keys.PLACEMENT).items}
    assert says == {(None, "eth0")}  # the keys it added name their endpoint's interface


def test_a_bad_layout_record_keeps_the_unscoped_way_and_is_reported(
    mem: MemoryKV, follow: Callable[[str], tuple[Interest, Woken]]
) -> None:
    mem.put_raw(keys.LAYOUT, '{"placement": "yes"}')
    interest, _ = follow("h1")
    assert not interest.scoped
    assert any("layout" in p for p in interest.snapshot().skipped)


NETS = ("n0", "n1", "n2")
Step = tuple[str, str, str]  # (action, network, host)


@settings(max_examples=15, deadline=None)
@given(
    before=st.lists(
        st.tuples(st.sampled_from(("add", "rm")), st.sampled_from(NETS), st.sampled_from(HOSTS)),
        max_size=8,
    ),
    after=st.lists(
        st.tuples(
            st.sampled_from(("add", "rm", "drop")), st.sampled_from(NETS), st.sampled_from(HOSTS)
        ),
        max_size=8,
    ),
)
def test_every_host_sees_the_view_a_full_watch_gives(before: list[Step], after: list[Step]) -> None:
    """Random writes before the agents start and while they run: each host's scoped view ends
    equal to the view from the whole store."""
    kv = MemoryKV()
    for h in HOSTS:
        kv.put_raw(keys.host(h), codec.encode_host(host(h)))
    ds = DesiredState(kv)
    for n, net in enumerate(NETS):
        ds.create_network(net, f"10.{n}.0.0/24")
    upgrade(kv)

    def run(steps: list[Step]) -> None:
        for action, net, h in steps:
            if action == "add" and ds.networks() and net in {n.name for n in ds.networks()}:
                ds.create_endpoint(net, h)
            elif action == "rm":
                mine = [e for e in ds.endpoints(net) if e.host == h] if _exists(ds, net) else []
                if mine:
                    ds.remove_endpoint(net, mine[0].id)
            elif action == "drop" and _exists(ds, net):
                ds.remove_network(net, force=True)

    run(before)
    interests = {h: Interest(lambda: kv, h, lambda: None, initial_backoff=0.01) for h in HOSTS}
    try:
        for i in interests.values():
            i.start()
        for i in interests.values():
            assert i.wait_synced(5)
        for h, i in interests.items():
            assert scoped_view(i, h) == full_view(kv, h)
        run(after)
        for h, i in interests.items():
            wait_for(lambda i=i, h=h: scoped_view(i, h) == full_view(kv, h))  # type: ignore[misc]
    finally:
        for i in interests.values():
            i.stop()


def _exists(ds: DesiredState, net: str) -> bool:
    return net in {n.name for n in ds.networks()}


def test_network_records_of_the_whole_cluster_decide_a_vni_conflict(
    mem: MemoryKV, follow: Callable[[str], tuple[Interest, Woken]]
) -> None:
    """h1 takes part only in the younger of two networks with one VNI (written by hand): it
    skips it as every host does, although it follows none of the older one's endpoints."""
    ds = DesiredState(mem)
    ds.create_network("old", "10.1.0.0/24", vni=500)
    ds.create_endpoint("old", "h2")
    mem.put_raw(keys.network("young"), codec.encode_network(Network("young", 500, "10.2.0.0/24")))
    ds.create_endpoint("young", "h1")
    upgrade(mem)
    interest, _ = follow("h1")
    assert scoped_view(interest, "h1") == full_view(mem, "h1") == ()
    assert any("young" in p for p in interest.snapshot().skipped)

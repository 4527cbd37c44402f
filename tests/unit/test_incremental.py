"""Incremental on FakeKernel: event-driven passes plan only what changed, without reading
the kernel, and a full observation afterwards always plans nothing. No root."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.dataplane.backend import DataPlaneError
from controller.dataplane.fake_kernel import FakeKernel
from controller.dataplane.fake_ovs import FakeOvs
from controller.dataplane.incremental import Incremental
from controller.model.kernel_events import (
    FdbSeen,
    LinkSeen,
    NeighSeen,
    PortFdbSeen,
    agrees,
    last_sightings,
)
from controller.model.kernel_state import (
    FdbEntry,
    KernelState,
    LinkState,
    NeighEntry,
    PortFdbEntry,
)
from controller.model.naming import bridge_name, vxlan_name
from controller.model.records import Endpoint, Host, Network
from controller.model.view import HostView, Snapshot, ViewMemo, host_view
from controller.plan.kernel import plan_kernel
from controller.plan.kernel_incremental import (
    KernelShortcut,
    after_entries,
    only_entries,
    plan_incremental,
)
from controller.plan.kernel_ops import ZERO_MAC
from controller.plan.ovs_incremental import OvsShortcut
from controller.plan.ovsdb import OvsLayout

HOSTS = tuple(Host(f"h{i}", f"192.0.2.{i + 1}") for i in range(4))
LOCAL = HOSTS[0]
NETS = tuple(Network(f"n{i}", 100 + i, f"10.{i}.0.0/24") for i in range(3))


@dataclass
class World:
    """A desired state edited step by step, and the data plane realising it."""

    fake: FakeKernel = field(default_factory=lambda: FakeKernel(LOCAL.vtep))
    endpoints: dict[tuple[str, str], Endpoint] = field(default_factory=dict)
    now: float = 0.0
    mtu: dict[str, int | None] = field(default_factory=dict)
    egress: dict[str, bool] = field(default_factory=dict)
    nets: dict[str, Network] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dp = Incremental(self.fake, KernelShortcut(), ttl=10.0, clock=lambda: self.now)

    def snapshot(self) -> Snapshot:
        for n in NETS:  # a record object is replaced only when it changes, as in the cache
            egress = self.egress.get(n.name, False)
            want = Network(
                n.name, n.vni, n.subnet, f"{n.subnet[:-4]}254" if egress else None,
                self.mtu.get(n.name), "masquerade" if egress else None,
            )  # fmt: skip
            if self.nets.get(n.name) != want:
                self.nets[n.name] = want
        return Snapshot(1, dict(self.nets), dict(self.endpoints), {h.name: h for h in HOSTS})

    def view(self) -> HostView:
        return host_view(self.snapshot(), LOCAL)

    def put(self, net: int, host: int, n: int) -> None:
        ip = f"10.{net}.0.{n}"
        ns = f"ns-{net}-{n}" if host == 0 else None
        if ns is not None:
            self.fake.add_netns(ns)
        eid = f"e{n}"
        self.endpoints[(f"n{net}", eid)] = Endpoint(
            eid, f"n{net}", f"h{host}", ip, f"02:00:0a:{net:02x}:00:{n:02x}", ns
        )

    def drop(self, net: int, n: int) -> None:
        self.endpoints.pop((f"n{net}", f"e{n}"), None)

    def step(self, kind: str, net: int, host: int, n: int) -> None:
        """One generated change: ``put``, ``drop``, ``mtu`` (0: none), ``egress`` (toggled) or
        ``tick`` (time passes beyond the remembered observation's ttl)."""
        if kind == "put":
            self.put(net, host, n)
        elif kind == "drop":
            self.drop(net, n)
        elif kind == "mtu":
            self.mtu[f"n{net}"] = n or None
        elif kind == "egress":
            self.egress[f"n{net}"] = not self.egress.get(f"n{net}", False)
        else:
            self.now += 11

    def run_pass(self) -> tuple[int, bool]:
        """One reconcile pass as the reconciler runs it: (ops applied, incremental?)."""
        before = self.dp.incremental_passes
        view = self.view()
        actual = self.dp.observe(view)
        ops = self.dp.plan(view, actual)
        if ops:
            self.dp.apply(ops)
        return len(ops), self.dp.incremental_passes > before

    def converged(self) -> bool:
        view = self.view()
        return plan_kernel(view, self.fake.observe(view)) == ()


def test_a_remote_endpoint_is_added_moved_and_removed_without_reading_the_kernel() -> None:
    w = World()
    w.put(0, 0, 10)
    w.put(0, 1, 20)
    assert w.run_pass()[1] is False  # the first pass observes in full (and makes links)
    assert w.run_pass() == (0, False)  # after links changed, the next pass observes in full
    reads = w.fake.observations
    for host in (2, 3, None):  # added on h2, moved to h3, removed
        if host is None:
            w.drop(0, 21)
        else:
            w.put(0, host, 21)
        changes, incremental = w.run_pass()
        assert changes > 0 and incremental and w.converged()
    assert w.fake.observations == reads + 3  # only the checks above read the fake
    # a local endpoint changes links: planned from what is remembered, without reading the
    # kernel; the kernel picks the new links' indexes and MACs, so the next pass reads it
    w.put(1, 0, 11)
    reads = w.fake.observations
    changes, _ = w.run_pass()
    assert changes > 0 and w.fake.observations == reads and w.converged()
    assert w.run_pass() == (0, False) and w.fake.observations == reads + 2
    w.drop(1, 11)  # ... and so is its removal
    changes, _ = w.run_pass()
    assert changes > 0 and w.fake.observations == reads + 2 and w.converged()


def test_only_the_changed_network_is_planned() -> None:
    w = World()
    for net in range(3):
        w.put(net, 0, 10)
        w.put(net, 1, 20)
    w.run_pass()
    last = w.view()
    state = w.fake.observe(last)
    w.put(2, 2, 30)
    ops = plan_incremental(last, w.view(), state)
    assert ops is not None and only_entries(ops)
    devices = {vxlan_name(102), bridge_name(102)}
    ports = {e.port for e in state.port_fdb.get(bridge_name(102), ())} | {vxlan_name(102)}
    assert all(getattr(op, "dev", None) in devices | ports for op in ops if hasattr(op, "dev"))
    assert sorted(map(str, ops)) == sorted(map(str, plan_kernel(w.view(), state)))


def test_drift_is_repaired_by_the_next_full_observation() -> None:
    w = World()
    w.put(0, 0, 10)
    w.put(0, 1, 20)
    w.run_pass()
    w.run_pass()
    w.fake.drop_fdb(vxlan_name(100), "02:00:0a:00:00:14", HOSTS[1].vtep)
    w.put(0, 2, 21)
    assert w.run_pass()[1]  # incremental: does not see the drift
    assert not w.converged()
    w.now += 11  # the remembered observation is older than ttl: the resync observes
    changes, incremental = w.run_pass()
    assert changes == 1 and not incremental and w.converged()


def test_a_failed_apply_forgets_the_remembered_state() -> None:
    w = World()
    w.put(0, 0, 10)
    w.run_pass()
    from controller.plan.kernel_ops import PutFdb

    w.fake.fail_next(PutFdb)
    w.put(0, 1, 20)
    with contextlib.suppress(DataPlaneError):
        w.run_pass()
    changes, incremental = w.run_pass()
    assert not incremental and changes > 0 and w.converged()


def test_after_entries_predicts_what_the_fake_observes() -> None:
    w = World()
    w.put(0, 0, 10)
    w.put(0, 1, 20)
    w.put(0, 2, 21)
    w.run_pass()
    before = w.fake.observe(w.view())
    w.drop(0, 21)
    w.put(0, 3, 20)  # moves e20 to h3
    w.put(0, 1, 22)
    view = w.view()
    ops = plan_kernel(view, before)
    assert only_entries(ops)
    w.fake.apply(ops)
    assert after_entries(before, ops) == w.fake.observe(view)


REMOTE_PUT = st.tuples(st.just("put"), st.integers(0, 2), st.integers(1, 3), st.integers(10, 17))
DROP = st.tuples(st.just("drop"), st.integers(0, 2), st.just(0), st.integers(9, 17))
STEP = st.one_of(  # mostly what other hosts change (the incremental path), links now and then
    *[REMOTE_PUT] * 6,
    *[DROP] * 3,
    st.tuples(st.just("put"), st.integers(0, 2), st.just(0), st.integers(10, 17)),
    st.tuples(st.just("mtu"), st.integers(0, 2), st.just(0), st.sampled_from((0, 1400))),
    st.tuples(st.just("egress"), st.integers(0, 2), st.just(0), st.just(0)),
    st.tuples(st.just("tick"), st.just(0), st.just(0), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(STEP, min_size=1, max_size=3), min_size=1, max_size=20))
def test_after_every_pass_a_full_observation_plans_nothing(rounds: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    """Random changes, a pass after each round: the invariant holds whichever path ran."""
    converge_after_every_round(World(), rounds)


def converge_after_every_round(w: World, rounds: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    """A local endpoint in every network (so remote changes matter), then ``rounds`` of
    changes with a pass after each: a full observation plans nothing after every pass."""
    for net in range(3):
        w.put(net, 0, 9)
    w.run_pass()
    for steps in rounds:
        for step in steps:
            w.step(*step)
        w.run_pass()
        assert w.converged(), steps


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(STEP, min_size=1, max_size=3), min_size=1, max_size=15))
def test_a_view_memo_changes_nothing_but_the_work(rounds: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    """host_view with a ViewMemo equals host_view without one, after any change sequence, and
    the memo is used for the networks a round did not touch."""
    w = World()
    memo = ViewMemo()
    for steps in rounds:
        for step in steps:
            w.step(*step)
        snap = w.snapshot()
        assert host_view(snap, LOCAL, memo=memo) == host_view(snap, LOCAL)
    snap = w.snapshot()
    reused = memo.reused
    host_view(snap, LOCAL, memo=memo)
    mine = {net for (net, _), ep in snap.endpoints.items() if ep.host == LOCAL.name}
    assert memo.reused - reused == len(mine)  # nothing changed: every network reused


# -- announcements: what the kernel says keeps the remembered state true ---------------------


def _remote_fdb(w: World) -> tuple[str, FdbEntry]:
    state = w.fake.observe(w.view())
    dev = vxlan_name(100)
    return dev, next(e for e in state.fdb[dev] if e.dst == HOSTS[1].vtep and e.mac != ZERO_MAC)


def test_an_announcement_that_disagrees_drops_the_remembered_state_and_wakes() -> None:
    woken: list[int] = []
    w = World()
    w.dp.on_drift = lambda: woken.append(1)
    w.put(0, 0, 10)
    w.put(0, 1, 20)
    w.run_pass()
    w.run_pass()  # converged, remembered
    dev, entry = _remote_fdb(w)
    w.dp.notice([FdbSeen(dev, entry, True)])  # what we hold: nothing learnt
    assert woken == [] and w.dp.drifts == 0
    w.fake.drop_fdb(dev, entry.mac, entry.dst)  # someone else deletes it, the kernel says so
    w.dp.notice([FdbSeen(dev, entry, False)])
    assert woken == [1] and w.dp.drifts == 1
    w.put(0, 2, 21)
    changes, incremental = w.run_pass()  # observes in full: repairs the drift at once
    assert not incremental and changes > 0 and w.converged()


def test_announcements_during_a_pass_are_checked_against_its_result() -> None:
    """The agent's own apply is announced while it runs: the last sighting of each object
    agrees with what the pass leaves, so nothing is dropped; lost announcements drop it."""
    w = World()
    w.put(0, 0, 10)
    w.put(0, 1, 20)
    w.run_pass()
    w.run_pass()
    w.put(0, 2, 21)
    view = w.view()
    actual = w.dp.observe(view)
    ops = w.dp.plan(view, actual)
    dev = vxlan_name(100)
    mac = "02:00:0a:00:00:15"
    inner_apply = w.fake.apply

    def announcing_apply(ops: object, progress: object = None) -> None:
        inner_apply(ops)  # type: ignore[arg-type]
        w.dp.notice([FdbSeen(dev, FdbEntry(mac, HOSTS[3].vtep), True)])  # stale
        w.dp.notice([FdbSeen(dev, FdbEntry(mac, HOSTS[2].vtep), True)])  # the last: agrees

    w.fake.apply = announcing_apply  # type: ignore[method-assign]
    w.dp.apply(ops)
    assert w.dp.drifts == 0 and w.dp.observe(w.view()) is not None
    assert not w.dp.observed_in_full
    w.dp.notice(None)
    assert w.dp.drifts == 1


def test_sightings_agree_with_what_an_observation_holds() -> None:
    link = LinkState("hdb1", "bridge", True, 4, 1450, "02:00:00:00:00:01", True)
    entry = FdbEntry("02:00:00:00:00:02", "192.0.2.2")
    state = KernelState(
        links={"hdb1": link},
        fdb={"hdv1": frozenset({entry})},
        neigh={"hdv1": frozenset({NeighEntry("10.0.0.2", "02:00:00:00:00:02", True)})},
        port_fdb={"hdb1": frozenset({PortFdbEntry("02:00:00:00:00:02", "hdv1")})},
    )
    assert agrees(state, LinkSeen("hdb1", link))
    assert not agrees(state, LinkSeen("hdb1", replace(link, up=False)))
    assert not agrees(state, LinkSeen("hdb1", None)) and agrees(state, LinkSeen("hdb2", None))
    assert agrees(state, FdbSeen("hdv1", entry, True))
    assert not agrees(state, FdbSeen("hdv1", entry, False))
    assert agrees(state, NeighSeen("hdv1", "10.0.0.2", NeighEntry("10.0.0.2", entry.mac, True)))
    assert not agrees(state, NeighSeen("hdv1", "10.0.0.2", NeighEntry("10.0.0.2", "", False)))
    assert not agrees(state, NeighSeen("hdv1", "10.0.0.2", None))
    moved = PortFdbEntry("02:00:00:00:00:02", "hdp1")
    assert agrees(state, PortFdbSeen("hdb1", moved, False))  # deleted where it no longer is
    assert not agrees(state, PortFdbSeen("hdb1", moved, True))
    seen = [LinkSeen("hdb1", None), FdbSeen("hdv1", entry, False), LinkSeen("hdb1", link)]
    assert last_sightings(seen) == [FdbSeen("hdv1", entry, False), LinkSeen("hdb1", link)]


# -- the ovs backend: flow modifications without a dump ----------------------------------------


@dataclass
class OvsWorld(World):
    """The same desired state, realised by the ovs backend's fake."""

    def __post_init__(self) -> None:
        self.ovs = FakeOvs(OvsLayout(), vtep=LOCAL.vtep)
        self.fake = self.ovs.kernel
        self.dp = Incremental(  # type: ignore[assignment]
            self.ovs, OvsShortcut(self.ovs.layout), ttl=10.0, still=self.ovs.unchanged,
            clock=lambda: self.now,
        )  # fmt: skip

    def converged(self) -> bool:
        view = self.view()
        return self.ovs.plan(view, self.ovs.observe(view)) == ()


def test_ovs_a_remote_endpoint_is_a_flow_modification_without_a_dump() -> None:
    w = OvsWorld()
    w.put(0, 0, 10)
    w.put(0, 1, 20)
    w.run_pass()
    w.run_pass()
    reads = w.fake.observations
    for host in (2, 3, None):
        if host is None:
            w.drop(0, 21)
        else:
            w.put(0, host, 21)
        changes, incremental = w.run_pass()
        assert changes == 1 and incremental and w.converged()
    assert w.fake.observations == reads + 3  # only the checks read
    bridge = OvsLayout().bridge
    port = next(iter(w.ovs.observe(w.view()).ovsdb.bridges[bridge].ports))
    w.ovs.del_port(bridge, port)  # OVSDB changed under us: the IDL tells
    w.put(0, 2, 22)
    changes, incremental = w.run_pass()
    assert not incremental and w.converged()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(STEP, min_size=1, max_size=3), min_size=1, max_size=15))
def test_ovs_after_every_pass_a_full_observation_plans_nothing(rounds: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    converge_after_every_round(OvsWorld(), rounds)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(STEP, min_size=1, max_size=3), min_size=1, max_size=15))
def test_a_grouped_snapshot_gives_the_same_view(rounds: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    """A snapshot whose endpoints come grouped by network, each group the same object while
    its network is unchanged (as ``Interest`` composes them), gives the view of the flat one."""
    w = World()
    memo = ViewMemo()
    groups: dict[str, dict[tuple[str, str], Endpoint]] = {}
    for steps in rounds:
        for step in steps:
            w.step(*step)
        snap = w.snapshot()
        for net in {k[0] for k in snap.endpoints} | set(groups):
            now = {k: e for k, e in snap.endpoints.items() if k[0] == net}
            if groups.get(net) != now:
                groups[net] = now  # a new object only for a network that changed
        groups = {n: g for n, g in groups.items() if g}
        grouped = replace(snap, groups=dict(groups))
        assert host_view(grouped, LOCAL, memo=memo) == host_view(snap, LOCAL)

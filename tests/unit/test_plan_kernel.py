"""plan_kernel on FakeKernel: end states, idempotence, ownership, failure policy. No root."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from controller.dataplane.backend import DataPlaneError, apply_all
from controller.dataplane.fake_kernel import FakeKernel
from controller.model.kernel_state import FdbEntry, KernelState, NeighEntry, PortFdbEntry
from controller.model.naming import bridge_name, veth_host_name, veth_peer_name, vxlan_name
from controller.model.nft_filter import FilterSpec
from controller.model.records import Endpoint, Host, Network
from controller.model.view import HostView, Snapshot, host_view
from controller.plan.kernel import endpoint_keys, plan_kernel
from controller.plan.kernel_ops import (
    ZERO_MAC,
    AddFlood,
    ConfigureEndpoint,
    DelFdb,
    DelLink,
    DelNeigh,
    DropBridgeGuards,
    EnsureBridge,
    EnsureVeth,
    EnsureVxlan,
    GuardPort,
    KernelOp,
    PutFdb,
    PutPortFdb,
    SyncFilters,
    UnguardPort,
)

H1, H2, H3 = Host("h1", "192.0.2.1"), Host("h2", "192.0.2.2"), Host("h3", "192.0.2.3")
BLUE = Network("blue", 100, "10.1.0.0/24", gateway="10.1.0.1")
RED = Network("red", 200, "10.2.0.0/24")
BR, VX = bridge_name(100), vxlan_name(100)


def ep(eid: str, host: str, n: int, net: str = "blue", netns: str | None = "ns") -> Endpoint:
    octet = 1 if net == "blue" else 2
    ns = f"{netns}-{eid}" if netns else None
    return Endpoint(eid, net, host, f"10.{octet}.0.{n}", f"02:00:0a:0{octet}:00:{n:02x}", ns)


def snap(*eps: Endpoint, nets: tuple[Network, ...] = (BLUE, RED)) -> Snapshot:
    return Snapshot(
        revision=1,
        networks={n.name: n for n in nets},
        endpoints={(e.network, e.id): e for e in eps},
        hosts={h.name: h for h in (H1, H2, H3)},
    )


def view(*eps: Endpoint, nets: tuple[Network, ...] = (BLUE, RED), host: Host = H1) -> HostView:
    return host_view(snap(*eps, nets=nets), host)


def fake_for(*views: HostView) -> FakeKernel:
    fk = FakeKernel(H1.vtep)
    for v in views:
        for netns, _ in endpoint_keys(v):
            fk.add_netns(netns)
    return fk


def converge(fk: FakeKernel, v: HostView) -> KernelState:
    """One pass, then the invariant: planning again on a fresh observation yields ()."""
    for netns, _ in endpoint_keys(v):
        fk.add_netns(netns)
    fk.apply(plan_kernel(v, fk.observe(v)))
    state = fk.observe(v)
    assert plan_kernel(v, state) == ()
    return state


def owned(state: KernelState) -> set[str]:
    return {name for name, lk in state.links.items() if lk.owned}


A, B = ep("a", "h1", 10), ep("b", "h1", 11)
C, D, E = ep("c", "h2", 20), ep("d", "h3", 30), ep("e", "h3", 31)


def test_from_empty_builds_every_object() -> None:
    v = view(A, B, C, D)
    fk = fake_for(v)
    state = converge(fk, v)
    assert owned(state) == {
        BR,
        VX,
        veth_host_name("blue", "a"),
        veth_host_name("blue", "b"),
    }  # peers moved into their namespaces
    assert state.links[VX].master == BR
    assert state.links[BR].mcast_snooping is False
    vx = state.links[VX].vxlan
    assert vx is not None
    assert (vx.vni, vx.local, vx.port, vx.learning, vx.proxy) == (100, H1.vtep, 4789, False, True)
    assert state.fdb[VX] == {
        FdbEntry(C.mac, H2.vtep),
        FdbEntry(D.mac, H3.vtep),
        FdbEntry(ZERO_MAC, H2.vtep),
        FdbEntry(ZERO_MAC, H3.vtep),
    }
    assert state.neigh[VX] == {NeighEntry(C.ip, C.mac), NeighEntry(D.ip, D.mac)}
    side = state.endpoints["ns-a", "eth0"]
    assert (side.mac, side.mtu, side.up, side.gateway) == (A.mac, 1450, True, "10.1.0.1")
    assert side.addresses == {"10.1.0.10/24"}
    assert all(lk.mtu == 1450 for lk in state.links.values())


def test_plan_is_pure_deterministic_and_creates_before_users() -> None:
    v = view(A, B, C, D)
    empty = KernelState()
    ops = plan_kernel(v, empty)
    assert ops == plan_kernel(v, empty)
    provided: set[str] = set()
    for op in ops:
        assert op.needs <= provided, f"{op} before what it needs"
        provided |= op.provides
        assert str(op) and "\n" not in str(op)


def test_applying_the_same_ops_twice_is_harmless() -> None:
    v = view(A, C)
    fk = fake_for(v)
    ops = plan_kernel(v, fk.observe(v))
    fk.apply(ops)
    first = fk.observe(v)
    fk.apply(ops)
    assert fk.observe(v) == first


def test_remote_endpoints_added_moved_and_removed() -> None:
    fk = fake_for()
    converge(fk, view(A, C))
    state = converge(fk, view(A, C, D, E))
    assert state.fdb[VX] >= {FdbEntry(D.mac, H3.vtep), FdbEntry(E.mac, H3.vtep)}
    assert NeighEntry(E.ip, E.mac) in state.neigh[VX]
    moved = replace(C, host="h3")  # C's MAC now lives behind h3
    ops = plan_kernel(view(A, moved, D), fk.observe(view(A, moved, D)))
    assert PutFdb(VX, C.mac, H3.vtep) in ops  # rewritten in place (replace), not del + add
    assert DelFdb(VX, C.mac, H2.vtep) not in ops
    state = converge(fk, view(A, moved, D))
    assert state.fdb[VX] == {
        FdbEntry(C.mac, H3.vtep),
        FdbEntry(D.mac, H3.vtep),
        FdbEntry(ZERO_MAC, H3.vtep),
    }
    assert state.neigh[VX] == {NeighEntry(C.ip, C.mac), NeighEntry(D.ip, D.mac)}
    state = converge(fk, view(A))
    assert state.fdb[VX] == frozenset()
    assert state.neigh[VX] == frozenset()


def test_flood_list_follows_member_hosts() -> None:
    fk = fake_for()
    state = converge(fk, view(A, C))
    assert {e.dst for e in state.fdb[VX] if e.mac == ZERO_MAC} == {H2.vtep}
    state = converge(fk, view(A, C, D))
    assert {e.dst for e in state.fdb[VX] if e.mac == ZERO_MAC} == {H2.vtep, H3.vtep}
    ops = plan_kernel(view(A, D), fk.observe(view(A, D)))
    assert DelFdb(VX, ZERO_MAC, H2.vtep) in ops
    assert AddFlood(VX, H3.vtep) not in ops
    state = converge(fk, view(A, D))
    assert {e.dst for e in state.fdb[VX] if e.mac == ZERO_MAC} == {H3.vtep}


def test_last_local_endpoint_leaving_removes_the_network_devices() -> None:
    r1, r2 = ep("r1", "h1", 10, net="red"), ep("r2", "h2", 11, net="red")
    fk = fake_for()
    converge(fk, view(A, B, C, r1, r2))
    state = converge(fk, view(A, C, r1, r2))  # b leaves: its veth goes, the network stays
    assert veth_host_name("blue", "b") not in state.links
    assert {BR, VX} <= owned(state)
    ops = plan_kernel(view(C, r1), fk.observe(view(C, r1)))
    # blue goes (no local endpoint left) with no per-entry deletes: the device takes them along;
    # red loses r2's entries first, then links are deleted.
    assert not any(isinstance(op, DelFdb | DelNeigh) and op.dev == VX for op in ops)
    kinds = [type(op) for op in ops]
    first_link_del = kinds.index(DelLink)
    assert all(k not in (DelFdb, DelNeigh) for k in kinds[first_link_del:])
    assert ops[first_link_del:][:3] == (
        DelLink(veth_host_name("blue", "a")),
        DelLink(VX),
        DelLink(BR),
    )
    state = converge(fk, view(C, r1))
    assert owned(state) == {bridge_name(200), vxlan_name(200), veth_host_name("red", "r1")}
    assert VX not in state.fdb
    state = converge(fk, view())
    assert owned(state) == set()
    # what stays: heddle's filter tables, empty (every VXLAN packet is dropped)
    assert fk.observe(view()) == KernelState(filters=FilterSpec())


def test_unowned_objects_are_never_deleted_or_adopted() -> None:
    fk = fake_for()
    fk.add_foreign_link("hdxyz")
    fk.add_foreign_link(BR)  # a look-alike holding the name we want
    fk.add_foreign_link("eth0")
    v = view(A, C)
    for netns, _ in endpoint_keys(v):
        fk.add_netns(netns)
    ops = plan_kernel(v, fk.observe(v))
    assert not any(isinstance(op, DelLink) for op in ops)
    assert EnsureBridge(BR, 1450) in ops
    with pytest.raises(DataPlaneError) as err:
        fk.apply(ops)
    assert err.value.op == EnsureBridge(BR, 1450)
    assert "not owned" in str(err.value)
    assert err.value.skipped  # everything that needed the bridge
    state = fk.observe(v)
    assert state.links[BR].owned is False
    assert "hdxyz" in state.links
    assert "eth0" not in state.links  # not ours by name: not even reported
    # nothing owned: nothing to delete (the filters are heddle's own tables: they empty)
    assert plan_kernel(view(), state) == (SyncFilters(FilterSpec(), ()),)


def test_foreign_interface_in_endpoint_netns_is_not_touched() -> None:
    fk = fake_for()
    fk.add_foreign_iface("ns-a", "eth0")
    v = view(A, C)
    with pytest.raises(DataPlaneError) as err:
        fk.apply(plan_kernel(v, fk.observe(v)))
    assert "not owned by heddle" in err.value.reason
    side = fk.observe(v).endpoints["ns-a", "eth0"]
    assert (side.owned, side.addresses) == (False, frozenset())


def test_mtu_change_reaches_every_object() -> None:
    fk = fake_for()
    converge(fk, view(A, B, C))
    small = view(A, B, C, nets=(replace(BLUE, mtu=1300), RED))
    state = converge(fk, small)
    assert {lk.mtu for lk in state.links.values()} == {1300}
    assert {s.mtu for s in state.endpoints.values()} == {1300}
    fk.set_mtu(VX, 1500)  # drift
    ops = plan_kernel(small, fk.observe(small))
    assert [type(op) for op in ops] == [EnsureVxlan]


def test_vtep_change_recreates_the_vxlan_device() -> None:
    fk = fake_for()
    converge(fk, view(A, C))
    moved_host = Host("h1", "192.0.2.9")
    v = view(A, C, host=moved_host)
    ops = plan_kernel(v, fk.observe(v))
    assert ops.index(DelLink(VX)) < ops.index(EnsureVxlan(VX, 100, "192.0.2.9", 1450, BR))
    assert PutFdb(VX, C.mac, H2.vtep) in ops  # the new device starts empty
    fk.apply(ops)
    state = fk.observe(v)
    assert plan_kernel(v, state) == ()
    attrs = state.links[VX].vxlan
    assert attrs is not None
    assert attrs.local == "192.0.2.9"


def test_failed_op_skips_its_dependants_only_and_next_pass_repairs() -> None:
    v = view(A, B, C)
    fk = fake_for(v)
    fk.fail_next(EnsureVeth)
    with pytest.raises(DataPlaneError) as err:
        fk.apply(plan_kernel(v, fk.observe(v)))
    failed_veth = err.value.op
    assert isinstance(failed_veth, EnsureVeth)
    skipped = err.value.skipped
    assert [type(op) for op in skipped] == [GuardPort, ConfigureEndpoint, PutPortFdb]
    assert {op.dev for op in skipped if isinstance(op, PutPortFdb)} == {failed_veth.host_name}
    state = fk.observe(v)
    assert FdbEntry(C.mac, H2.vtep) in state.fdb[VX]  # independent ops still applied
    assert plan_kernel(v, state)[0] == failed_veth
    converge(fk, v)


def test_missing_endpoint_netns_fails_only_that_endpoint() -> None:
    v = view(A, B, C)
    fk = FakeKernel(H1.vtep, netns=("ns-a",))  # ns-b does not exist
    with pytest.raises(DataPlaneError) as err:
        fk.apply(plan_kernel(v, fk.observe(v)))
    assert len(err.value.failures) == 1
    assert "ns-b does not exist" in str(err.value)
    state = fk.observe(v)
    assert state.endpoints["ns-b", "eth0"].netns_exists is False
    assert state.endpoints["ns-a", "eth0"].present
    fk.add_netns("ns-b")
    converge(fk, v)


def test_docker_endpoint_peer_stays_in_host_namespace_until_taken() -> None:
    dock = ep("k", "h1", 12, netns=None)
    fk = fake_for()
    state = converge(fk, view(dock, C))
    peer = state.links[veth_peer_name("blue", "k")]
    assert (peer.mac, peer.mtu, peer.master) == (dock.mac, 1450, None)
    assert state.endpoints == {}
    fk.move_peer(veth_peer_name("blue", "k"), "docker-ns")  # Docker takes it
    assert plan_kernel(view(dock, C), fk.observe(view(dock, C))) == ()
    state = converge(fk, view(C, A))
    assert veth_host_name("blue", "k") not in state.links


def test_stale_entries_and_drift_are_repaired() -> None:
    fk = fake_for()
    converge(fk, view(A, C, D))
    fk.drop_fdb(VX, C.mac, H2.vtep)
    ops = plan_kernel(view(A, C, D), fk.observe(view(A, C, D)))
    assert ops == (PutFdb(VX, C.mac, H2.vtep),)
    converge(fk, view(A, C, D))


def test_endpoint_moving_between_networks_and_namespaces() -> None:
    fk = fake_for()
    converge(fk, view(A, C))
    a_red = replace(ep("a", "h1", 10, net="red"), netns="ns-a")
    state = converge(fk, view(a_red, C))
    assert veth_host_name("blue", "a") not in state.links
    assert state.endpoints["ns-a", "eth0"].addresses == {"10.2.0.10/24"}


def _ops_only(ops: tuple[KernelOp, ...], kind: type) -> list[KernelOp]:
    return [op for op in ops if isinstance(op, kind)]


def test_owned_link_of_wrong_kind_is_replaced() -> None:
    fk = fake_for()
    converge(fk, view(A, C))
    state = fk.observe(view(A, C))
    links = dict(state.links)
    links[BR] = replace(links[BR], kind="vxlan")
    ops = plan_kernel(view(A, C), replace(state, links=links))
    assert _ops_only(ops, DelLink) == [DelLink(BR)]
    assert _ops_only(ops, EnsureBridge) == [EnsureBridge(BR, 1450)]


def test_apply_all_batches_entry_runs_and_keeps_per_op_results() -> None:
    seen: list[list[str]] = []
    ops: list[KernelOp] = [
        EnsureBridge(BR, 1450),
        PutFdb(VX, C.mac, H2.vtep),
        PutFdb(VX, D.mac, H3.vtep),
        AddFlood(VX, H2.vtep),
        EnsureVeth("hdv1", "hdp1", BR, 1450, A.mac),
        DelNeigh(VX, C.ip),
    ]

    def one(op: KernelOp) -> None:
        seen.append([str(op)])

    def batch(chunk: Sequence[KernelOp]) -> list[str | None]:
        seen.append([str(op) for op in chunk])
        return ["boom" if isinstance(op, AddFlood) else None for op in chunk]

    with pytest.raises(DataPlaneError) as err:
        apply_all(ops, one, batchable=lambda op: not op.provides, apply_batch=batch, batch_size=2)
    assert [len(call) for call in seen] == [1, 2, 1, 1, 1]  # bridge, 2+1 entries, veth, neigh
    assert err.value.failures == ((AddFlood(VX, H2.vtep), "boom"),)
    assert err.value.skipped == ()


def test_endpoint_whose_netns_changed_is_rebuilt_in_the_new_one() -> None:
    fk = fake_for()
    converge(fk, view(A, C))
    a_moved = replace(A, netns="ns-x")
    fk.add_netns("ns-x")
    ops = plan_kernel(view(a_moved, C), fk.observe(view(a_moved, C)))
    assert ops[0] == DelLink(veth_host_name("blue", "a"))
    state = converge(fk, view(a_moved, C))
    assert state.endpoints["ns-x", "eth0"].addresses == {"10.1.0.10/24"}
    old = fk.observe(view(A, C)).endpoints["ns-a", "eth0"]
    assert not old.present


# -- filters (nftables): VXLAN only from members, anti-spoofing on endpoint ports ----------------


def test_filters_admit_a_new_member_before_its_entries_and_drop_a_leaving_one_after() -> None:
    from controller.plan.filters import desired_filters
    from controller.plan.kernel import gateways_of

    fk = FakeKernel(H1.vtep, netns=("ns-a", "ns-b"))
    a, c, d = ep("a", "h1", 10), ep("c", "h2", 20), ep("d", "h3", 30)
    state = converge(fk, view(a, c))
    assert state.filters == desired_filters(view(a, c), gateways_of(view(a, c)))
    assert dict(state.filters.members) == {100: (H2.vtep,)}
    assert list(state.guards) == [veth_host_name("blue", "a")]

    ops = plan_kernel(view(a, d), state)  # h3 joins, h2 leaves
    kinds = [type(op) for op in ops]
    first, last = kinds.index(SyncFilters), len(kinds) - 1 - kinds[::-1].index(SyncFilters)
    union = ops[first]
    assert isinstance(union, SyncFilters) and dict(union.spec.members)[100] == (H2.vtep, H3.vtep)
    assert first < kinds.index(PutFdb)  # h3 admitted before its FDB entry exists
    assert last > max(i for i, k in enumerate(kinds) if k is DelFdb)  # h2 dropped after
    final = ops[last]
    assert isinstance(final, SyncFilters) and dict(final.spec.members)[100] == (H3.vtep,)
    state = converge(fk, view(a, d))
    assert dict(state.filters.members) == {100: (H3.vtep,)}


def test_filters_that_vanish_are_rewritten_at_once() -> None:
    fk = FakeKernel(H1.vtep, netns=("ns-a",))
    a, c = ep("a", "h1", 10), ep("c", "h2", 20)
    converge(fk, view(a, c))
    fk.drop_filters()
    ops = plan_kernel(view(a, c), fk.observe(view(a, c)))
    assert [type(op) for op in ops] == [SyncFilters, GuardPort]


def test_a_port_is_guarded_after_its_veth_exists_and_before_its_endpoint_comes_up() -> None:
    fk = FakeKernel(H1.vtep, netns=("ns-a",))
    a, c = ep("a", "h1", 10), ep("c", "h2", 20)
    ops = plan_kernel(view(a, c), fk.observe(view(a, c)))
    kinds = [type(op) for op in ops]
    assert kinds.index(EnsureVeth) < kinds.index(GuardPort) < kinds.index(ConfigureEndpoint)
    [guard] = [op for op in ops if isinstance(op, GuardPort)]
    assert guard.port == veth_host_name("blue", "a") and guard.guards[0].mac == a.mac
    assert [g.ip for g in guard.guards] == [a.ip]


def test_a_failed_guard_keeps_its_endpoint_down() -> None:
    fk = FakeKernel(H1.vtep, netns=("ns-a",))
    a, c = ep("a", "h1", 10), ep("c", "h2", 20)
    fk.fail_next(GuardPort, "nftables: refused")
    with pytest.raises(DataPlaneError):
        fk.apply(plan_kernel(view(a, c), fk.observe(view(a, c))))
    assert not fk.observe(view(a, c)).endpoints["ns-a", "eth0"].up
    state = converge(fk, view(a, c))
    assert state.endpoints["ns-a", "eth0"].up and list(state.guards) == [guard_port(a)]


def guard_port(e: Endpoint) -> str:
    return veth_host_name(e.network, e.id)


def test_a_leaving_endpoint_is_unguarded_after_its_veth_is_gone() -> None:
    fk = FakeKernel(H1.vtep, netns=("ns-a", "ns-b"))
    a, b, c = ep("a", "h1", 10), ep("b", "h1", 11), ep("c", "h2", 20)
    converge(fk, view(a, b, c))
    ops = plan_kernel(view(a, c), fk.observe(view(a, c)))
    kinds = [type(op) for op in ops]
    assert UnguardPort(guard_port(b)) in ops and GuardPort not in kinds
    assert kinds.index(DelLink) < kinds.index(UnguardPort)
    assert list(converge(fk, view(a, c)).guards) == [guard_port(a)]


def test_an_earlier_releases_bridge_guards_go_once_every_port_has_its_own() -> None:
    """The upgrade: the new chains are written, then the old table goes, in one pass; a guard
    that fails keeps the old table (the port stays guarded by it)."""
    fk = FakeKernel(H1.vtep, netns=("ns-a",))
    a, c = ep("a", "h1", 10), ep("c", "h2", 20)
    converge(fk, view(a, c))
    fk.guard_chains.clear()
    fk.bridge_table = True
    ops = plan_kernel(view(a, c), fk.observe(view(a, c)))
    assert [type(op) for op in ops] == [GuardPort, DropBridgeGuards]
    fk.fail_next(GuardPort, "nftables: refused")
    with pytest.raises(DataPlaneError):
        fk.apply(ops)
    assert fk.bridge_table
    state = converge(fk, view(a, c))
    assert not state.bridge_guards and list(state.guards) == [guard_port(a)]


def test_bridge_learns_nothing_and_knows_every_mac_statically() -> None:
    v = view(A, B, C)
    state = converge(fk := fake_for(v), v)
    ports = [lk for lk in state.links.values() if lk.master == BR]
    assert ports and all(lk.learning is False for lk in ports)
    ha, hb = veth_host_name("blue", "a"), veth_host_name("blue", "b")
    assert state.port_fdb[BR] == {
        PortFdbEntry(A.mac, ha),
        PortFdbEntry(B.mac, hb),
        PortFdbEntry(C.mac, VX),
    }
    # C moves to this host (same MAC): its entry moves from the VXLAN port to its new veth.
    c_here = replace(C, host="h1")
    moved = view(A, B, c_here)
    ops = plan_kernel(moved, fk.observe(moved))
    assert PutPortFdb(veth_host_name("blue", "c"), C.mac) in ops
    state = converge(fk, moved)
    assert PortFdbEntry(C.mac, veth_host_name("blue", "c")) in state.port_fdb[BR]
    # B leaves: its veth goes, and its entry with it.
    state = converge(fk, view(A, c_here))
    assert all(e.mac != B.mac for e in state.port_fdb[BR])


def test_learning_turned_on_or_a_static_entry_lost_is_repaired() -> None:
    v = view(A, C)
    fk = fake_for(v)
    converge(fk, v)
    ha = veth_host_name("blue", "a")
    fk.set_learning(ha, True)
    fk.set_learning(VX, True)
    fk.drop_port_fdb(BR, C.mac)
    ops = plan_kernel(v, fk.observe(v))
    assert {type(op) for op in ops} == {EnsureVeth, EnsureVxlan, PutPortFdb}
    assert PutPortFdb(VX, C.mac) in ops
    converge(fk, v)


def test_a_port_leaving_and_rejoining_its_bridge_gets_its_entries_back() -> None:
    v = view(A, C)
    fk = fake_for(v)
    converge(fk, v)
    fk.set_master(VX, None)  # someone releases the VXLAN port: the bridge forgets its entries
    state = fk.observe(v)
    assert PortFdbEntry(C.mac, VX) not in state.port_fdb[BR]
    ops = plan_kernel(v, state)
    assert ops.index(PutPortFdb(VX, C.mac)) > ops.index(
        next(op for op in ops if isinstance(op, EnsureVxlan))
    )
    converge(fk, v)

"""plan_ovs (OVSDB rows, port numbers, flows, host links) on FakeOvs: end states, idempotence,
ownership, restarts, failure policy. No root."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import pytest

from controller.dataplane.backend import DataPlaneError
from controller.dataplane.fake_ovs import FakeOvs
from controller.model.errors import InvalidRecord
from controller.model.flow import COOKIE, make_flow
from controller.model.naming import veth_host_name, veth_peer_name
from controller.model.ovs_state import BridgeState, OvsState, PortState
from controller.model.records import Endpoint, Host, Network
from controller.model.view import HostView, Snapshot, host_view
from controller.plan.kernel import endpoint_keys
from controller.plan.kernel_ops import ConfigureEndpoint, DelLink
from controller.plan.ovs import desired_flows, plan_ovs
from controller.plan.ovs_incremental import OvsShortcut
from controller.plan.ovs_ops import (
    ArmFlowRestoreWait,
    AwaitOvsPort,
    BeginFlowRestore,
    DelOvsBridge,
    DelOvsPort,
    DisableTxChecksum,
    EndFlowRestore,
    EnsureOvsBridge,
    EnsureOvsPort,
    EnsurePortVeth,
    EnsureUnderlay,
    ModFlows,
    OvsOp,
    ReplaceFlows,
    ResolveVteps,
)
from controller.plan.ovsdb import (
    FIRST_ENDPOINT_OFPORT,
    TUNNEL_OFPORT,
    TUNNEL_OPTIONS,
    OvsLayout,
    assign_ofports,
    phy_hwaddr,
)

H1, H2, H3 = (Host(f"h{i}", f"192.0.2.{i}", backend="ovs") for i in range(1, 4))
BLUE = Network("blue", 100, "10.1.0.0/24", gateway="10.1.0.1")
RED = Network("red", 200, "10.2.0.0/24")
NETDEV = OvsLayout(datapath="netdev", underlay_dev="ul0")
SYSTEM = OvsLayout()
BR, PHY = NETDEV.bridge, NETDEV.phy_bridge


def ep(eid: str, host: str, n: int, net: str = "blue") -> Endpoint:
    octet = 1 if net == "blue" else 2
    return Endpoint(
        eid, net, host, f"10.{octet}.0.{n}", f"02:00:0a:0{octet}:00:{n:02x}", f"ns-{eid}"
    )


A, B, R = ep("a", "h1", 10), ep("b", "h1", 11), ep("r", "h1", 12, "red")
C, D = ep("c", "h2", 20), ep("d", "h3", 30)


def view(*eps: Endpoint) -> HostView:
    snap = Snapshot(
        revision=1,
        networks={"blue": BLUE, "red": RED},
        endpoints={(e.network, e.id): e for e in eps},
        hosts={h.name: h for h in (H1, H2, H3)},
    )
    return host_view(snap, H1)


def fake(layout: OvsLayout = NETDEV, *views: HostView) -> FakeOvs:
    fo = FakeOvs(layout, H1.vtep, nic_address=f"{H1.vtep}/24")
    for v in views:
        add_netns(fo, v)
    return fo


def add_netns(fo: FakeOvs, v: HostView) -> None:
    for netns, _ in endpoint_keys(v):
        fo.kernel.add_netns(netns)


def converge(fo: FakeOvs, v: HostView) -> OvsState:
    """One pass, then the invariant: planning again on a fresh observation yields ()."""
    add_netns(fo, v)
    fo.apply(fo.plan(v, fo.observe(v)))
    state = fo.observe(v)
    assert fo.plan(v, state) == ()
    return state


T = TypeVar("T")


def of_type(ops: Sequence[OvsOp], kind: type[T]) -> list[T]:
    return [op for op in ops if isinstance(op, kind)]


FULL = view(A, B, R, C, D)


def test_first_pass_builds_everything_and_converges() -> None:
    fo = fake()
    state = converge(fo, FULL)
    br = state.ovsdb.bridges[BR]
    assert br.owned and br.fail_mode == "secure" and br.datapath_type == "netdev"
    assert br.ports["hdvxlan"].options == TUNNEL_OPTIONS
    assert br.ports["hdvxlan"].ofport == TUNNEL_OFPORT
    numbers = {(p.network, p.endpoint): p.ofport for p in br.ports.values() if p.endpoint}
    assert numbers == {("blue", "a"): 10, ("blue", "b"): 11, ("red", "r"): 12}
    phy = state.ovsdb.bridges[PHY]
    assert phy.hwaddr == phy_hwaddr(H1.vtep) and phy.ports["ul0"].ofport == 1
    assert state.flows[BR] == frozenset(desired_flows(NETDEV, FULL, state)[BR])
    assert state.flows[PHY] == frozenset(desired_flows(NETDEV, FULL, state)[PHY])
    assert state.ovsdb.flow_restore_wait and not br.restore_pending and not fo.waiting
    assert state.underlay is not None and state.underlay.phy_addresses == {"192.0.2.1/24"}
    assert not state.underlay.nic_addresses and state.underlay.nic_noarp
    assert state.tx_checksum == {("ns-a", "eth0"): False, ("ns-b", "eth0"): False,
                                 ("ns-r", "eth0"): False}  # fmt: skip
    side = state.kernel.endpoints["ns-a", "eth0"]
    assert side.mac == A.mac and f"{A.ip}/24" in side.addresses and side.gateway == "10.1.0.1"


def test_first_pass_order_and_applying_twice_changes_nothing() -> None:
    fo = fake(NETDEV, FULL)
    ops = fo.plan(FULL, fo.observe(FULL))
    kinds = [type(op) for op in ops]
    assert kinds.index(EnsureOvsBridge) < kinds.index(EnsureOvsPort) < kinds.index(ReplaceFlows)
    assert isinstance(ops[-1], EndFlowRestore) and BeginFlowRestore in kinds
    assert kinds.index(EnsureUnderlay) > kinds.index(ReplaceFlows), "br-phy forwards first"
    port_a = veth_host_name("blue", "a")
    veth = kinds.index(EnsurePortVeth)
    assert veth < next(i for i, op in enumerate(ops) if getattr(op, "name", "") == port_a)
    fo.apply(ops)
    once = fo.observe(FULL)
    fo.apply(ops)
    assert fo.observe(FULL) == once


def test_an_endpoint_port_is_awaited_after_its_side_and_flows() -> None:
    """ovs-vswitchd adds the port while the endpoint's side and flows are written: the port is
    written without waiting, and awaited last; the NIC and tunnel ports are waited for."""
    fo = fake(NETDEV, FULL)
    converge(fo, view(A, C, D))
    ops = fo.plan(FULL, fo.observe(FULL))
    port_b = veth_host_name("blue", "b")
    at = {type(op): i for i, op in enumerate(ops) if getattr(op, "name", "") == port_b}
    side = next(
        i for i, op in enumerate(ops) if isinstance(op, ConfigureEndpoint) and op.netns == "ns-b"
    )
    write = at[EnsureOvsPort]
    assert write < side < ops.index(of_type(ops, ModFlows)[0]) < at[AwaitOvsPort]
    assert not ops[write].wait and ops[at[AwaitOvsPort]] == AwaitOvsPort(BR, port_b, 11)
    fresh = fake(NETDEV, FULL)
    first = fresh.plan(FULL, fresh.observe(FULL))
    infra = [op for op in of_type(first, EnsureOvsPort) if op.endpoint is None]
    assert len(infra) == 2 and all(op.wait for op in infra)


def test_a_port_vswitchd_cannot_open_fails_at_its_await_and_nothing_else_does() -> None:
    fo = fake(NETDEV, FULL)
    converge(fo, view(A, C, D))
    ops = fo.plan(FULL, fo.observe(FULL))
    port_b = veth_host_name("blue", "b")
    # no device for the port to open: its veth (and so the endpoint's side) left out
    broken = [
        op
        for op in ops
        if not isinstance(op, EnsurePortVeth | ConfigureEndpoint | DisableTxChecksum)
        or getattr(op, "netns", None) != "ns-b"
    ]
    with pytest.raises(DataPlaneError) as err:
        fo.apply(broken)
    assert [type(op) for op, _ in err.value.failures] == [AwaitOvsPort]
    assert "ofport -1" in err.value.failures[0][1]
    state = converge(fo, FULL)  # the next pass builds the veth and reopens the port
    assert state.ovsdb.bridges[BR].ports[port_b].ofport == 11


def test_system_datapath_has_no_phy_bridge_underlay_or_checksum_work() -> None:
    fo = fake(SYSTEM)
    ops = fo.plan(FULL, fo.observe(FULL))
    assert not of_type(ops, EnsureUnderlay) and not of_type(ops, DisableTxChecksum)
    assert [op.name for op in of_type(ops, EnsureOvsBridge)] == [SYSTEM.bridge]
    assert all(not op.tx_checksum_off for op in of_type(ops, EnsurePortVeth))
    state = converge(fo, FULL)
    assert set(state.ovsdb.bridges) == {SYSTEM.bridge} and state.underlay is None


def test_port_numbers_are_kept_and_new_ones_take_the_lowest_free() -> None:
    fo = fake()
    converge(fo, FULL)
    converge(fo, view(B, R, C, D))  # a leaves: 10 is free again
    E = ep("e", "h1", 13)
    state = converge(fo, view(B, R, C, D, E))
    ports = state.ovsdb.bridges[BR].ports
    assert ports[veth_host_name("blue", "b")].ofport == 11
    assert ports[veth_host_name("red", "r")].ofport == 12
    assert ports[veth_host_name("blue", "e")].ofport == 10


def test_assign_ofports_avoids_numbers_others_use_and_reassigns_on_conflict() -> None:
    v = view(A, B)
    foreign = PortState("foreign0", owned=False, ofport_request=10, ofport=10)
    bridge = BridgeState(BR, owned=True, ports={"foreign0": foreign}, used_ofports=frozenset({10}))
    assert assign_ofports(v, bridge) == {("blue", "a"): 11, ("blue", "b"): 12}
    stolen = PortState(veth_host_name("blue", "a"), owned=True, ofport_request=10, ofport=13,
                       network="blue", endpoint="a")  # fmt: skip
    bridge = BridgeState(BR, owned=True, ports={stolen.name: stolen, "foreign0": foreign},
                         used_ofports=frozenset({10, 13}))  # fmt: skip
    assert assign_ofports(v, bridge)[("blue", "a")] == 11, "its number is held by another port"
    assert assign_ofports(v, None) == {("blue", "a"): FIRST_ENDPOINT_OFPORT, ("blue", "b"): 11}


def test_removing_endpoints_is_a_flow_delta_and_collects_ports_and_veths() -> None:
    fo = fake()
    converge(fo, FULL)
    smaller = view(A, C)
    ops = fo.plan(smaller, fo.observe(smaller))
    assert not of_type(ops, ReplaceFlows) and len(of_type(ops, ModFlows)) == 1
    assert {op.name for op in of_type(ops, DelOvsPort)} == {
        veth_host_name("blue", "b"), veth_host_name("red", "r"),
    }  # fmt: skip
    assert {op.name for op in of_type(ops, DelLink)} == {
        veth_host_name("blue", "b"), veth_host_name("red", "r"),
    }  # fmt: skip
    kinds = [type(op) for op in ops]
    assert kinds.index(DelOvsPort) < kinds.index(DelLink), "a port leaves OVS before its device"
    state = converge(fo, smaller)
    assert set(state.kernel.links) == {veth_host_name("blue", "a")}, "its peer is in ns-a"


def test_a_new_remote_endpoint_adds_flows_only() -> None:
    fo = fake()
    converge(fo, FULL)
    more = view(A, B, R, C, D, ep("x", "h3", 40))
    ops = fo.plan(more, fo.observe(more))
    [mod] = ops
    assert isinstance(mod, ModFlows) and not mod.delete
    changed = {(f.table, f.priority) for f in mod.add}
    assert changed == {(10, 100), (20, 100)}, "ARP responder and unicast; flood unchanged"


def test_foreign_objects_are_never_adopted_or_removed() -> None:
    fo = fake()
    fo.add_foreign_bridge("br-other")
    converge(fo, FULL)
    fo.add_foreign_port(BR, "foreign0", 40)
    foreign_flow = make_flow(40, 1, {}, ["drop"], cookie=0x77)
    fo.add_foreign_flow(BR, foreign_flow)
    assert fo.plan(FULL, fo.observe(FULL)) == ()
    converge(fo, view(A, C))
    assert foreign_flow in fo.flows(BR)
    assert "br-other" not in fo.observe(FULL).ovsdb.bridges


def test_a_foreign_bridge_with_our_name_is_refused_every_pass() -> None:
    fo = fake(SYSTEM)
    fo.add_foreign_bridge(SYSTEM.bridge)
    for _ in range(2):
        ops = fo.plan(FULL, fo.observe(FULL))
        assert EnsureOvsBridge(SYSTEM.bridge, "system") in ops
        with pytest.raises(DataPlaneError) as err:
            fo.apply(ops)
        assert "not owned" in err.value.reason
        assert any(isinstance(op, EnsureOvsPort) for op in err.value.skipped)
    assert SYSTEM.bridge in fo.observe(FULL).ovsdb.bridges


def test_vswitchd_restart_restores_flows_inside_the_flow_restore_window() -> None:
    woke: list[int] = []
    fo = FakeOvs(NETDEV, H1.vtep, nic_address=f"{H1.vtep}/24", on_change=lambda: woke.append(1))
    converge(fo, FULL)
    fo.restart_vswitchd()
    assert woke == [1, 1] and fo.waiting, "armed: the new ovs-vswitchd waits for our flows"
    ops = fo.plan(FULL, fo.observe(FULL))
    assert isinstance(ops[0], BeginFlowRestore) and isinstance(ops[-2], EndFlowRestore)
    assert isinstance(ops[-1], ResolveVteps), "asked once ovs-vswitchd forwards again"
    assert {op.bridge for op in of_type(ops, ReplaceFlows)} == {BR, PHY}
    assert not of_type(ops, EnsureOvsPort), "ports come back from OVSDB by themselves"
    fo.apply(ops)
    state = fo.observe(FULL)
    assert fo.plan(FULL, state) == () and not fo.waiting and state.ovsdb.flow_restore_wait


def test_an_interrupted_restore_is_finished_by_the_next_pass() -> None:
    fo = fake()
    converge(fo, FULL)
    fo.restart_vswitchd()
    ops = fo.plan(FULL, fo.observe(FULL))
    fo.apply([op for op in ops if not isinstance(op, EndFlowRestore)])  # the agent dies here
    assert fo.waiting
    state = fo.observe(FULL)
    assert fo.plan(FULL, state) == (EndFlowRestore(BR, (PHY, BR)),)
    converge(fo, FULL)
    assert not fo.waiting


def test_a_failed_flow_install_keeps_vswitchd_waiting_and_is_retried() -> None:
    fo = fake()
    converge(fo, FULL)
    fo.restart_vswitchd()
    fo.fail_next(ReplaceFlows)
    with pytest.raises(DataPlaneError) as err:
        fo.apply(fo.plan(FULL, fo.observe(FULL)))
    assert any(isinstance(op, EndFlowRestore) for op in err.value.skipped)
    assert fo.waiting
    converge(fo, FULL)
    assert not fo.waiting


def test_without_restore_wait_flow_restore_wait_is_never_touched() -> None:
    layout = OvsLayout(datapath="netdev", underlay_dev="ul0", restore_wait=False)
    fo = fake(layout)
    state = converge(fo, FULL)
    assert not state.ovsdb.flow_restore_wait
    fo.restart_vswitchd()
    ops = fo.plan(FULL, fo.observe(FULL))
    assert not of_type(ops, BeginFlowRestore) and not of_type(ops, EndFlowRestore)
    assert not of_type(ops, ArmFlowRestoreWait)
    converge(fo, FULL)


def test_observe_fails_while_vswitchd_is_down() -> None:
    fo = fake()
    converge(fo, FULL)
    fo.kill_vswitchd()
    with pytest.raises(DataPlaneError, match="cannot read Open vSwitch"):
        fo.observe(FULL)
    fo.start_vswitchd()
    converge(fo, FULL)


def test_drift_is_repaired() -> None:
    fo = fake()
    state = converge(fo, FULL)
    fo.del_port(BR, veth_host_name("blue", "b"))
    fo.del_flow(BR, sorted(state.flows[BR])[-1])
    fo.enable_tx_checksum("ns-a", "eth0")
    ops = fo.plan(FULL, fo.observe(FULL))
    assert DisableTxChecksum("ns-a", "eth0", veth_peer_name("blue", "a")) in ops
    assert [op.name for op in of_type(ops, EnsureOvsPort)] == [veth_host_name("blue", "b")]
    assert len(of_type(ops, ModFlows)) == 1
    converge(fo, FULL)


def test_a_vanished_veth_is_rebuilt_and_its_port_reopened() -> None:
    fo = fake()
    converge(fo, FULL)
    fo.kernel.apply([DelLink(veth_host_name("blue", "a"))])
    ops = fo.plan(FULL, fo.observe(FULL))
    name = veth_host_name("blue", "a")
    kinds = [type(op) for op in ops if getattr(op, "name", getattr(op, "host_name", "")) == name]
    assert kinds == [DelOvsPort, EnsurePortVeth, EnsureOvsPort, AwaitOvsPort]
    assert any(isinstance(op, ConfigureEndpoint) and op.netns == "ns-a" for op in ops)
    converge(fo, FULL)


def test_one_broken_endpoint_does_not_stop_the_others() -> None:
    fo = fake()
    fo.kernel.add_netns("ns-b")
    fo.kernel.add_netns("ns-r")  # ns-a is missing
    with pytest.raises(DataPlaneError) as err:
        fo.apply(fo.plan(FULL, fo.observe(FULL)))
    # the pair is born inside its namespace: with none, nothing of the endpoint is made
    assert [type(op) for op, _ in err.value.failures] == [EnsurePortVeth]
    state = fo.observe(FULL)
    assert state.kernel.endpoints["ns-b", "eth0"].present
    assert state.flows[BR], "the flows went in"
    fo.kernel.add_netns("ns-a")
    converge(fo, FULL)


def test_underlay_fails_clearly_when_the_vtep_is_nowhere() -> None:
    fo = FakeOvs(NETDEV, H1.vtep, nic_address=None)
    ops = fo.plan(FULL, fo.observe(FULL))
    assert EnsureUnderlay("ul0", PHY, H1.vtep, None) in ops
    with pytest.raises(DataPlaneError, match="neither"):
        fo.apply(ops)


def test_switching_to_the_system_datapath_removes_br_phy() -> None:
    fo = fake()
    converge(fo, FULL)
    fo.layout = SYSTEM
    ops = fo.plan(FULL, fo.observe(FULL))
    assert DelOvsBridge(PHY) in ops and EnsureOvsBridge(SYSTEM.bridge, "system") in ops
    state = converge(fo, FULL)
    assert set(state.ovsdb.bridges) == {SYSTEM.bridge}


def test_plan_is_pure() -> None:
    fo = fake()
    converge(fo, view(A, C))
    state = fo.observe(FULL)
    assert plan_ovs(NETDEV, FULL, state) == plan_ovs(NETDEV, FULL, state)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"datapath": "netdev"},
        {"datapath": "kernel"},
        {"bridge": "a-very-long-bridge-name"},
        {"datapath": "netdev", "underlay_dev": "ul0", "phy_bridge": "br-heddle"},
    ],
)
def test_layout_refuses_impossible_settings(kwargs: dict[str, str]) -> None:
    with pytest.raises(InvalidRecord):
        OvsLayout(**kwargs)  # type: ignore[arg-type]


def test_cookie_is_on_every_flow() -> None:
    fo = fake()
    state = converge(fo, FULL)
    assert all(f.cookie == COOKIE for b in state.flows.values() for f in b)


# -- member VTEPs resolved ahead of traffic (netdev) ----------------------------------------


def test_member_vteps_are_resolved_before_any_flow_tunnels_to_them() -> None:
    fo = fake()
    ops = fo.plan(FULL, fo.observe(FULL))
    resolve = [op for op in ops if isinstance(op, ResolveVteps)]
    assert resolve == [ResolveVteps("br-phy", H1.vtep, (H2.vtep, H3.vtep))]
    integ = next(i for i, op in enumerate(ops) if isinstance(op, ReplaceFlows) and op.bridge == BR)
    assert ops.index(resolve[0]) < integ
    converge(fo, FULL)
    assert fo.tunnel_neighbours == {H2.vtep, H3.vtep}


def test_only_member_vteps_and_only_on_netdev() -> None:
    fo = fake()
    converge(fo, view(A, B))  # no remote member: nothing to resolve
    assert fo.tunnel_neighbours == set()
    converge(fo, view(A, C))
    assert fo.tunnel_neighbours == {H2.vtep}
    sysfo = fake(SYSTEM)
    ops = sysfo.plan(FULL, sysfo.observe(FULL))
    assert not [op for op in ops if isinstance(op, ResolveVteps)]


def test_a_silent_vtep_is_not_asked_on_every_pass() -> None:
    fo = fake()
    fo.silent_vteps.add(H3.vtep)
    state = converge(fo, FULL)  # converge asserts the next plan is ()
    assert state.underlay is not None and state.underlay.unanswered == {H3.vtep}
    assert fo.tunnel_neighbours == {H2.vtep}


def test_a_restarted_vswitchd_resolves_again_once_it_forwards() -> None:
    fo = fake()
    converge(fo, FULL)
    fo.restart_vswitchd()
    assert fo.tunnel_neighbours == set()
    ops = fo.plan(FULL, fo.observe(FULL))
    end = next(i for i, op in enumerate(ops) if isinstance(op, EndFlowRestore))
    resolve = next(i for i, op in enumerate(ops) if isinstance(op, ResolveVteps))
    assert resolve > end, "asked while ovs-vswitchd still holds back forwarding"
    converge(fo, FULL)
    assert fo.tunnel_neighbours == {H2.vtep, H3.vtep}


def test_a_new_member_host_is_resolved_on_the_incremental_path() -> None:
    fo = fake()
    last = view(A, C)
    state = converge(fo, last)
    short = OvsShortcut(NETDEV)
    # a remote endpoint on a host already resolved: flows only
    more = view(A, C, ep("e", "h2", 21))
    assert all(isinstance(op, ModFlows) for op in short.plan(last, more, state))
    # on a host not resolved yet: planned in full, the VTEP first
    joined = view(A, C, D)
    ops = short.plan(last, joined, state)
    kinds = [type(op) for op in ops]
    assert ResolveVteps in kinds and kinds.index(ResolveVteps) < kinds.index(ModFlows)
    fo.apply(ops)
    assert fo.tunnel_neighbours == {H2.vtep, H3.vtep}


def test_br_phy_mac_is_fixed_local_and_derived_from_either_family() -> None:
    assert phy_hwaddr("192.0.2.1") == "02:68:c0:00:02:01"
    assert phy_hwaddr("fd00:172:31:185::a01") == "02:68:00:00:0a:01"

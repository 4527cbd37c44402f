"""The ovs planner: ``OvsLayout`` + ``HostView`` + observed ``OvsState`` -> ordered ``OvsOp``s.
Pure and deterministic.

It composes three pure parts: the OVSDB rows (``plan.ovsdb``), the OpenFlow tables
(``plan.flows``) and the host links (the endpoint side is the kernel backend's
``ConfigureEndpoint``; stale links go as in the kernel planner).

Order of the result:

1. deletes: owned OVS ports nobody wants, owned bridges nobody wants, then owned links nobody
   wants (a port leaves OVS before its device goes) and links to re-create;
2. bridges, ``flow-restore-wait`` armed, the NIC port on br-phy and the tunnel port;
3. flows of br-phy, then the underlay (the VTEP address moves only once br-phy forwards), then
   member VTEPs missing from OVS's tunnel-neighbour cache resolved (``netdev``; before any
   flow tunnels to them, so the first packet is not dropped -- but after the restore ends when
   a restarted ovs-vswitchd holds back all forwarding for ``flow-restore-wait``);
4. per local endpoint: veth, OVS port (written, not waited for), endpoint side, TX checksum;
5. flows of the integration bridge; then each endpoint port awaited (``AwaitOvsPort``): the
   endpoint's side and flows are written while ovs-vswitchd adds its port.

Flows: a bridge whose table holds none of our flows gets the whole table (``ReplaceFlows``);
otherwise only the difference (``ModFlows``). A table without our flows is also what a restarted
ovs-vswitchd looks like, so then (with ``restore_wait``) the installs are wrapped in
``BeginFlowRestore`` / ``EndFlowRestore``, and a marker left by an interrupted restore is
finished. Invariant: once every op applied, planning on a fresh observation returns ``()``.
"""

from __future__ import annotations

from collections.abc import Collection

from controller.model.flow import Flow
from controller.model.naming import veth_host_name, veth_peer_name
from controller.model.ovs_state import OvsState, UnderlayState
from controller.model.records import Endpoint
from controller.model.view import HostView, NetworkView
from controller.plan.flows import EndpointKey, render_flows, render_phy_flows
from controller.plan.kernel_ops import DelLink, KernelOp
from controller.plan.links import configure_endpoint, is_owned, side_ok, stale_link_dels
from controller.plan.ovs_ops import (
    ArmFlowRestoreWait,
    AwaitOvsPort,
    BeginFlowRestore,
    DelOvsBridge,
    DelOvsPort,
    DisableTxChecksum,
    EndFlowRestore,
    EnsureOvsPort,
    EnsurePortVeth,
    EnsureUnderlay,
    ModFlows,
    OvsOp,
    ReplaceFlows,
    ResolveVteps,
)
from controller.plan.ovsdb import (
    NIC_OFPORT,
    TUNNEL_OFPORT,
    OvsLayout,
    assign_ofports,
    bridge_ok,
    desired_bridges,
    desired_ports,
    port_of,
    port_ok,
)

__all__ = ["desired_flows", "owned_counts", "plan_flows", "plan_ovs", "vteps_to_resolve"]


def desired_flows(
    layout: OvsLayout, view: HostView, actual: OvsState, table: tuple[Flow, ...] | None = None
) -> dict[str, tuple[Flow, ...]]:
    """The complete table of every bridge heddle keeps, for ``view``; the integration bridge's
    is ``table`` when given (the caller rendered it). Pure."""
    if table is None:
        table = render_flows(view, assign_ofports(view, actual.ovsdb.bridges.get(layout.bridge)),
                             TUNNEL_OFPORT)  # fmt: skip
    out = {layout.bridge: table}
    if layout.netdev:
        out[layout.phy_bridge] = render_phy_flows(NIC_OFPORT)
    return out


def owned_counts(layout: OvsLayout, view: HostView, actual: OvsState) -> dict[str, int]:
    """What the host owns once ``view`` is realised (after a clean apply), by kind: ``flows``
    (every bridge heddle keeps) and ``ports``. Pure; counted from what the planner wants."""
    ofports = assign_ofports(view, actual.ovsdb.bridges.get(layout.bridge))
    return {
        "flows": sum(len(t) for t in desired_flows(layout, view, actual).values()),
        "ports": len(desired_ports(layout, view, ofports)),
    }


def plan_flows(
    bridge: str, want: tuple[Flow, ...], have: frozenset[Flow]
) -> ReplaceFlows | ModFlows | None:
    """The op that turns table ``have`` (our flows) into ``want``; ``None`` when equal. Pure."""
    if not have:
        return ReplaceFlows(bridge, want)
    want_by_key = {f.key: f for f in want}
    have_by_key = {f.key: f for f in have}
    add = tuple(f for k, f in want_by_key.items() if have_by_key.get(k) != f)
    delete = tuple(sorted(f for k, f in have_by_key.items() if k not in want_by_key))
    if not add and not delete:
        return None
    return ModFlows(bridge, add, delete)


def plan_ovs(
    layout: OvsLayout,
    view: HostView,
    actual: OvsState,
    only: Collection[EndpointKey] | None = None,
    table: tuple[Flow, ...] | None = None,
) -> tuple[OvsOp, ...]:
    """The ops that turn ``actual`` into what ``view`` asks for (see the module docstring);
    with ``only``, the veth, port and side of those local endpoints alone, the others taken to
    be as ``view`` asks; with ``table``, the integration bridge's table ``render_flows`` gives
    for ``view`` (both for ``controller/plan/ovs_incremental.py``'s ``plan_local``).

    Never raises for well-formed input. Objects that have a wanted name but no owner marker are
    not adopted: their ``Ensure*`` op is still planned and the driver refuses it, so the conflict
    is reported on every pass instead of hidden."""
    db = actual.ovsdb
    ofports = assign_ofports(view, db.bridges.get(layout.bridge))
    ports = desired_ports(layout, view, ofports)
    wanted_ports = {(p.bridge, p.name) for p in ports}

    port_dels: list[OvsOp] = []
    bridge_dels: list[OvsOp] = []
    for name, br in sorted(db.bridges.items()):
        if not br.owned:
            continue
        if name not in layout.bridges:
            bridge_dels.append(DelOvsBridge(name))
            continue
        for pname, port in sorted(br.ports.items()):
            if port.owned and (name, pname) not in wanted_ports:
                port_dels.append(DelOvsPort(name, pname))

    recreate: list[OvsOp] = []
    bridges = desired_bridges(layout, view.host.vtep)
    infra: list[OvsOp] = [b for b in bridges if not bridge_ok(b, db.bridges.get(b.name))]
    # A bridge that is created, or gets another datapath (a new ofproto), starts empty.
    tables = {b: actual.flows.get(b, frozenset()) for b in layout.bridges}
    for b in bridges:
        have = db.bridges.get(b.name)
        if have is None or not have.owned or have.datapath_type != b.datapath_type:
            tables[b.name] = frozenset()
    if layout.restore_wait and not db.flow_restore_wait:
        infra.append(ArmFlowRestoreWait())
    infra += [
        p for p in ports if p.endpoint is None and not port_ok(p, port_of(db, p.bridge, p.name))
    ]

    endpoints: list[OvsOp] = []
    desired_links: set[str] = set()
    by_name = {p.name: p for p in ports if p.endpoint is not None}
    for nv in view.networks:
        for ep in nv.local:
            if only is not None and (ep.network, ep.id) not in only:
                continue
            want = by_name.get(veth_host_name(ep.network, ep.id))
            if want is not None:
                endpoints += _plan_endpoint(layout, nv, ep, want, actual, desired_links, recreate)

    flows = desired_flows(layout, view, actual, table)
    installs: dict[str, OvsOp] = {}
    for bridge in layout.bridges:
        op = plan_flows(bridge, flows[bridge], tables[bridge])
        if op is not None:
            installs[bridge] = op
    restarted = any(not tables[b] for b in layout.bridges)
    integ = db.bridges.get(layout.bridge)
    pending = integ is not None and integ.owned and integ.restore_pending
    begin: list[OvsOp] = []
    end: list[OvsOp] = []
    if layout.restore_wait and (restarted or pending):
        if restarted and not pending:
            begin.append(BeginFlowRestore(layout.bridge))
        end.append(EndFlowRestore(layout.bridge, layout.bridges))

    phy: list[OvsOp] = []
    if layout.netdev:
        if layout.phy_bridge in installs:
            phy.append(installs[layout.phy_bridge])
        phy += _plan_underlay(layout, view, actual.underlay or UnderlayState())
        missing = vteps_to_resolve(layout, view, actual)
        if missing:
            # A restarted ovs-vswitchd (armed, empty tables) forwards nothing until the restore
            # ends: ask then.
            resolve = ResolveVteps(layout.phy_bridge, view.host.vtep, missing)
            (end if end and restarted and db.flow_restore_wait else phy).append(resolve)
    integ_flows = [installs[layout.bridge]] if layout.bridge in installs else []
    awaits: list[OvsOp] = [
        AwaitOvsPort(op.bridge, op.name, op.ofport)
        for op in endpoints
        if isinstance(op, EnsureOvsPort) and not op.wait
    ]

    stale: list[KernelOp] = stale_link_dels(actual.kernel, desired_links)
    link_dels = [op for op in stale if isinstance(op, DelLink)]  # only ever DelLink
    return (
        *port_dels,
        *bridge_dels,
        *link_dels,
        *recreate,
        *infra,
        *begin,
        *phy,
        *endpoints,
        *integ_flows,
        *awaits,
        *end,
    )


def _plan_endpoint(
    layout: OvsLayout,
    nv: NetworkView,
    ep: Endpoint,
    port: EnsureOvsPort,
    actual: OvsState,
    desired_links: set[str],
    recreate: list[OvsOp],
) -> list[OvsOp]:
    ops: list[OvsOp] = []
    mtu = nv.mtu
    links = actual.kernel.links
    hv, pv = veth_host_name(ep.network, ep.id), veth_peer_name(ep.network, ep.id)
    desired_links.update((hv, pv))
    host = links.get(hv)
    if host is not None and is_owned(host) and host.kind != "veth":
        recreate.append(DelLink(hv))
        host = None
    peer = links.get(pv)
    fresh = host is None or not is_owned(host)
    peer_ok = peer is None or not is_owned(peer) or (peer.mac == ep.mac and peer.mtu == mtu)
    # No master check: on the system datapath the kernel makes ovs-system the master.
    host_ok = host is not None and is_owned(host) and host.mtu == mtu and host.up
    have = port_of(actual.ovsdb, port.bridge, port.name)
    if fresh and have is not None and have.owned:
        # ovs-vswitchd keeps its handle on the device that went away; only a port removed and
        # added again opens the new device (a reconfiguration with equal rows does not).
        ops.append(DelOvsPort(port.bridge, port.name))
    if not (host_ok and peer_ok):
        veth = EnsurePortVeth(hv, pv, mtu, ep.mac, layout.netdev, ep.netns, ep.ifname)
        ops.append(veth)
    if fresh or not port_ok(port, have):
        ops.append(port)
    if ep.netns is not None:
        side = actual.kernel.endpoints.get((ep.netns, ep.ifname))
        want = configure_endpoint(ep, nv, pv, mtu)
        if fresh or not side_ok(side, want):
            ops.append(want)
        if layout.netdev and actual.tx_checksum.get((ep.netns, ep.ifname)) is True:
            ops.append(DisableTxChecksum(ep.netns, ep.ifname, pv))
    return ops


def vteps_to_resolve(layout: OvsLayout, view: HostView, actual: OvsState) -> tuple[str, ...]:
    """The member VTEPs (of every network's flood list) that OVS's tunnel-neighbour cache
    lacks and that were not asked recently without an answer; ``()`` unless ``netdev``. Pure;
    sorted."""
    if not layout.netdev:
        return ()
    u = actual.underlay or UnderlayState()
    members = {vtep for nv in view.networks for vtep in nv.flood}
    return tuple(sorted(members - u.tunnel_neighbours - u.unanswered))


def _plan_underlay(layout: OvsLayout, view: HostView, u: UnderlayState) -> list[OvsOp]:
    vtep = view.host.vtep
    on_phy = sorted(a for a in u.phy_addresses if a.split("/")[0] == vtep)
    on_nic = sorted(a for a in u.nic_addresses if a.split("/")[0] == vtep)
    found = on_phy or on_nic
    prefixlen = int(found[0].split("/")[1]) if found else None
    ok = (
        u.nic_present
        and u.nic_up
        and u.nic_noarp
        and not on_nic
        and u.phy_present
        and u.phy_up
        and bool(on_phy)
    )
    if ok:
        return []
    assert layout.underlay_dev is not None  # OvsLayout guarantees it for netdev
    return [EnsureUnderlay(layout.underlay_dev, layout.phy_bridge, vtep, prefixlen)]

"""Kernel planner: ``HostView`` + observed ``KernelState`` -> ordered ``KernelOp`` tuple. Pure.

What a host realises per network it has endpoints in (README.md, docs/platform.md K5): a bridge
``bridge_name(vni)`` (multicast snooping off), a VXLAN device ``vxlan_name(vni)`` in it (VNI,
dstport 4789, ``local`` = this host's VTEP, nolearning, proxy), one veth per local endpoint, a
unicast FDB entry and a permanent neighbour entry per remote endpoint, and one all-zero FDB entry
per flood VTEP. Everything gets the network's overlay MTU. The bridge learns nothing: every port
has learning off, and the bridge's own FDB holds one static entry per MAC (local endpoints' on
their veths, remote ones on the VXLAN device), so no frame, forged or not, can move a MAC.

Order of the result (each group in view order, which is sorted, so the result is deterministic):

1. stale FDB / neighbour entries on VXLAN devices that stay, and stale static bridge entries (a
   device that goes takes its entries with it, so none are planned for it),
2. link deletes: endpoint veths, then VXLAN devices, then bridges (and devices that must be
   re-created because a creation-time attribute changed), then the guard chains of the ports
   that went (``UnguardPort``),
3. per network: bridge, VXLAN device, FDB, flood and neighbour entries, then per local endpoint
   its veth, its port's guard (``GuardPort``: the hook needs the device; the endpoint must not
   send before it) and its side, then the static bridge entries (their ports exist by then),
4. an earlier release's bridge table of guards (``DropBridgeGuards``), once every port's own
   chain is in place.

With ``filters``, table ``inet heddle`` (``plan_filters``) is synced before 1 when it admits
something new and after 2 when it stops admitting something.

Only links that are *owned* (``hd`` prefix and the owner ifalias, see ``KernelState``) are ever
deleted. Invariant: once every op applied, planning on a fresh observation returns ``()``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from controller.model.egress import Gateway, egress_gateways
from controller.model.kernel_state import (
    FdbEntry,
    KernelState,
    LinkState,
    NeighEntry,
    PortFdbEntry,
    VxlanAttrs,
)
from controller.model.naming import (
    bridge_name,
    veth_host_name,
    veth_peer_name,
    vxlan_name,
)
from controller.model.records import Endpoint
from controller.model.view import HostView, NetworkView
from controller.plan.filters import desired_guards, plan_filters, stale_guards
from controller.plan.kernel_ops import (
    VXLAN_PORT,
    ZERO_MAC,
    AddFlood,
    DelFdb,
    DelLink,
    DelNeigh,
    DelPortFdb,
    DropBridgeGuards,
    EnableForwarding,
    EnsureBridge,
    EnsureVeth,
    EnsureVxlan,
    GuardPort,
    KernelOp,
    PutFdb,
    PutNeigh,
    PutPortFdb,
)
from controller.plan.links import configure_endpoint, is_owned, side_ok, stale_link_dels

__all__ = [
    "endpoint_keys",
    "gateways_of",
    "netns_of_interest",
    "owned_counts",
    "plan_kernel",
]


def netns_of_interest(view: HostView) -> tuple[str, ...]:
    """The endpoint namespaces an observation must look into for ``view`` (sorted, unique)."""
    return tuple(
        sorted({ep.netns for nv in view.networks for ep in nv.local if ep.netns is not None})
    )


def owned_counts(view: HostView) -> dict[str, int]:
    """What the host owns once ``view`` is realised (so, after a clean apply: the backend
    invariant), by kind: ``bridges``, ``vxlan`` devices, ``veths`` (host sides), ``fdb``
    (unicast and flood entries), ``neigh``. Counted from the view, not from a dump."""
    return {
        "bridges": len(view.networks),
        "vxlan": len(view.networks),
        "veths": sum(len(nv.local) for nv in view.networks),
        "fdb": sum(len(_desired_unicast(nv)) + len(nv.flood) for nv in view.networks),
        "neigh": sum(len(_desired_neigh(nv)) for nv in view.networks),
    }


def endpoint_keys(view: HostView) -> tuple[tuple[str, str], ...]:
    """The ``(netns, ifname)`` endpoint sides an observation must report for ``view``."""
    return tuple(
        sorted(
            {
                (ep.netns, ep.ifname)
                for nv in view.networks
                for ep in nv.local
                if ep.netns is not None
            }
        )
    )


def gateways_of(view: HostView) -> tuple[Gateway, ...]:
    """The egress gateways this host holds (``controller/model/egress.py``). Pure."""
    return egress_gateways((nv.network for nv in view.networks), view.host.backend)[0]


def plan_kernel(
    view: HostView,
    actual: KernelState,
    filters: bool = True,
    gateways: tuple[Gateway, ...] | None = None,
    guards: bool | None = None,
    only: Collection[tuple[str, str]] | None = None,
) -> tuple[KernelOp, ...]:
    """The ops that turn ``actual`` into what ``view`` asks for. Pure and deterministic.

    Never raises for any well-formed input. ``OWNER_ALIAS`` marks what may be deleted; a link
    that has a desired name but is not owned is not adopted: the ``Ensure*`` op is still planned
    and the driver refuses it, so the conflict is reported on every pass instead of hidden.
    ``filters``: also keep heddle's nftables tables (``SyncFilters``, ``GuardPort``,
    ``UnguardPort``; off where another backend builds on this planner's links). ``guards``:
    keep the ports' guards without ``inet heddle`` (``None``: as ``filters``; the incremental
    planner plans the table for the whole host). ``gateways``: the egress gateways of the
    whole host (default: of ``view``; a caller planning part of a host gives the whole host's).
    ``only``: plan the veth, guard and side of these local endpoints (network, id) alone, the
    others taken to be as ``view`` asks (the incremental planner's; ``actual`` then holds no
    link of theirs).
    """
    gateways = gateways_of(view) if gateways is None else gateways
    gws = {g.vni: g for g in gateways}
    entry_dels: list[KernelOp] = []
    recreate_dels: list[KernelOp] = []
    builds: list[KernelOp] = []
    desired: set[str] = set()
    guard = filters if guards is None else guards
    plan = _Plan(actual, guard, desired, entry_dels, recreate_dels, builds, only)

    for nv in view.networks:
        _plan_network(view.host.vtep, nv, gws.get(nv.network.vni), plan)
    if gws and actual.forwarding is False:
        builds.append(EnableForwarding())

    first, last = plan_filters(view, actual, gateways) if filters else ([], [])
    link_dels = stale_link_dels(actual, desired)
    unguard = stale_guards(view, actual) if guard else []
    drop: list[KernelOp] = []
    if guard and actual.bridge_guards:  # after every port's own chain (upgrade)
        peers = tuple(op.peer for op in builds if isinstance(op, GuardPort))
        drop.append(DropBridgeGuards(peers))
    return (*first, *entry_dels, *link_dels, *recreate_dels, *unguard, *last, *builds, *drop)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every network's planning reads (``actual``, ``guard``) and appends to."""

    actual: KernelState
    guard: bool
    desired: set[str]
    entry_dels: list[KernelOp]
    recreate_dels: list[KernelOp]
    builds: list[KernelOp]
    only: Collection[tuple[str, str]] | None = None


def _plan_network(vtep: str, nv: NetworkView, gw: Gateway | None, plan: _Plan) -> None:
    actual, desired, entry_dels = plan.actual, plan.desired, plan.entry_dels
    recreate_dels, builds = plan.recreate_dels, plan.builds
    vni, mtu = nv.network.vni, nv.mtu
    br, vx = bridge_name(vni), vxlan_name(vni)
    desired.update((br, vx))

    bridge = actual.links.get(br)
    if bridge is not None and is_owned(bridge) and bridge.kind != "bridge":
        recreate_dels.append(DelLink(br))
        bridge = None
    addresses = (gw.cidr,) if gw is not None else ()
    mac = gw.mac if gw is not None else None
    if not _bridge_ok(bridge, mtu, mac) or actual.bridge_addresses.get(br, ()) != addresses:
        builds.append(EnsureBridge(br, mtu, mac, addresses))

    want = VxlanAttrs(vni=vni, local=vtep, port=VXLAN_PORT, learning=False, proxy=True)
    vxlan = actual.links.get(vx)
    if vxlan is not None and is_owned(vxlan) and (vxlan.kind != "vxlan" or vxlan.vxlan != want):
        recreate_dels.append(DelLink(vx))
        vxlan = None
    if not _vxlan_ok(vxlan, want, br, mtu):
        builds.append(EnsureVxlan(vx, vni, vtep, mtu, br))

    # Entries: compare with what the device holds now; a device about to be (re)created holds
    # nothing, so every desired entry is planned. They go in before the endpoints come up: an
    # endpoint's first ARP is answered by the VXLAN proxy only from an existing neighbour entry
    # (otherwise it is dropped and the endpoint's resolver waits a full second to retry).
    kept = vxlan is not None and is_owned(vxlan)
    bridge_kept = bridge is not None and is_owned(bridge)
    have_ports = actual.port_fdb.get(br, frozenset()) if bridge_kept else frozenset()
    entry_dels.extend(_port_fdb_dels(nv, have_ports))
    have_fdb = actual.fdb.get(vx, frozenset()) if kept else frozenset()
    have_neigh = actual.neigh.get(vx, frozenset()) if kept else frozenset()
    entry_dels.extend(_fdb_dels(vx, nv, have_fdb))
    entry_dels.extend(_neigh_dels(vx, nv, have_neigh))
    builds.extend(_fdb_puts(vx, nv, have_fdb))
    builds.extend(_neigh_puts(vx, nv, have_neigh))

    local = [ep for ep in nv.local if plan.only is None or (ep.network, ep.id) in plan.only]
    for ep in local:
        builds.extend(_plan_endpoint(nv, ep, br, mtu, plan))
    # Static bridge entries go in once their ports exist. A port that is not in this bridge
    # yet (new, re-created, or enslaved elsewhere) holds none: joining a bridge starts empty.
    recreated = {op.name for op in recreate_dels if isinstance(op, DelLink)}
    joining = {
        name
        for name in (vx, *(veth_host_name(ep.network, ep.id) for ep in local))
        if not _in_bridge(actual.links.get(name), br) or name in recreated
    }
    builds.extend(_port_fdb_puts(nv, have_ports, joining))


def _plan_endpoint(nv: NetworkView, ep: Endpoint, br: str, mtu: int, plan: _Plan) -> list[KernelOp]:
    """The endpoint's veth, its guard (after the veth: a hook needs its device; before the
    endpoint comes up: it never sends unguarded), then its side."""
    actual, desired, recreate_dels = plan.actual, plan.desired, plan.recreate_dels
    ops: list[KernelOp] = []
    hv, pv = veth_host_name(ep.network, ep.id), veth_peer_name(ep.network, ep.id)
    desired.update((hv, pv))
    host = actual.links.get(hv)
    if host is not None and is_owned(host) and host.kind != "veth":
        recreate_dels.append(DelLink(hv))
        host = None
    peer = actual.links.get(pv)
    if host is not None and is_owned(host) and ep.netns is not None and peer is None:
        side = actual.endpoints.get((ep.netns, ep.ifname))
        if side is not None and side.netns_exists and not side.present:
            # The peer is neither in the host namespace nor where it belongs: it sits in a
            # namespace this endpoint no longer names (its netns changed). Start over.
            recreate_dels.append(DelLink(hv))
            host = None
    fresh = host is None or not is_owned(host)
    peer_ok = peer is None or not is_owned(peer) or (peer.mac == ep.mac and peer.mtu == mtu)
    host_ok = (
        host is not None
        and is_owned(host)
        and host.master == br
        and host.learning is False
        and host.mtu == mtu
        and host.up
    )
    if not (host_ok and peer_ok):
        ops.append(EnsureVeth(hv, pv, br, mtu, ep.mac, ep.netns, ep.ifname))
    want_guards = desired_guards(ep) if plan.guard else ()
    if want_guards and (fresh or actual.guards.get(hv) != want_guards):
        ops.append(GuardPort(hv, pv, want_guards))  # fresh: 6.1 took the chain with the veth
    if ep.netns is not None:
        side = actual.endpoints.get((ep.netns, ep.ifname))
        want = configure_endpoint(ep, nv, pv, mtu)
        if fresh or not side_ok(side, want):
            ops.append(want)
    return ops


def _in_bridge(link: LinkState | None, br: str) -> bool:
    return link is not None and is_owned(link) and link.master == br


def _bridge_ok(link: LinkState | None, mtu: int, mac: str | None) -> bool:
    return (
        link is not None
        and is_owned(link)
        and link.kind == "bridge"
        and link.mtu == mtu
        and link.up
        and link.mcast_snooping is False
        and (mac is None or link.mac == mac)
    )


def _vxlan_ok(link: LinkState | None, want: VxlanAttrs, br: str, mtu: int) -> bool:
    return (
        link is not None
        and is_owned(link)
        and link.vxlan == want
        and link.master == br
        and link.learning is False
        and link.mtu == mtu
        and link.up
    )


def _desired_unicast(nv: NetworkView) -> dict[str, str]:
    """MAC -> VTEP. A MAC claimed twice is realised once (smallest VTEP), so the plan still
    converges; the view is where such a conflict should be reported."""
    out: dict[str, str] = {}
    for r in nv.remote:
        cur = out.get(r.mac)
        if cur is None or r.vtep < cur:
            out[r.mac] = r.vtep
    return out


def _desired_neigh(nv: NetworkView) -> dict[str, str]:
    """IP -> MAC, for every address (IPv4 and IPv6) of every remote endpoint; an address claimed
    twice is realised once (smallest MAC)."""
    out: dict[str, str] = {}
    for r in nv.remote:
        for ip in r.addresses:
            cur = out.get(ip)
            if cur is None or r.mac < cur:
                out[ip] = r.mac
    return out


def _desired_ports(nv: NetworkView) -> dict[str, str]:
    """MAC -> bridge port: each remote MAC on the VXLAN device, each local endpoint's MAC on its
    veth (a local endpoint wins over a remote claim of the same MAC)."""
    vx = vxlan_name(nv.network.vni)
    out = dict.fromkeys(_desired_unicast(nv), vx)
    for ep in nv.local:
        out[ep.mac] = veth_host_name(ep.network, ep.id)
    return out


def _port_fdb_dels(nv: NetworkView, have: Iterable[PortFdbEntry]) -> list[KernelOp]:
    """Static entries for MACs the network no longer has (a MAC that only moved to another port
    is moved by ``PutPortFdb``'s replace instead)."""
    want = _desired_ports(nv)
    return [DelPortFdb(e.port, e.mac) for e in sorted(have) if e.mac not in want]


def _port_fdb_puts(
    nv: NetworkView, have: Iterable[PortFdbEntry], rebuilt: set[str]
) -> list[KernelOp]:
    present = set(have)
    return [
        PutPortFdb(port, mac)
        for mac, port in sorted(_desired_ports(nv).items())
        if port in rebuilt or PortFdbEntry(mac, port) not in present
    ]


def _fdb_dels(vx: str, nv: NetworkView, have: Iterable[FdbEntry]) -> list[KernelOp]:
    unicast = _desired_unicast(nv)
    flood = set(nv.flood)
    dsts_of: dict[str, int] = {}
    for e in have:
        dsts_of[e.mac] = dsts_of.get(e.mac, 0) + 1
    stale: list[tuple[str, str]] = []
    for e in have:
        if e.mac == ZERO_MAC:
            if e.dst not in flood:
                stale.append((e.mac, e.dst))
        elif e.mac not in unicast:
            stale.append((e.mac, e.dst))
        elif e.dst != unicast[e.mac] and dsts_of[e.mac] > 1:
            # A single wrong destination is rewritten in place by PutFdb (replace); extra
            # destinations on a unicast MAC would survive a replace, so remove them.
            stale.append((e.mac, e.dst))
    return [DelFdb(vx, mac, dst) for mac, dst in sorted(stale)]


def _fdb_puts(vx: str, nv: NetworkView, have: Iterable[FdbEntry]) -> list[KernelOp]:
    present = {(e.mac, e.dst) for e in have}
    ops: list[KernelOp] = []
    for mac, dst in sorted(_desired_unicast(nv).items()):
        if (mac, dst) not in present:
            ops.append(PutFdb(vx, mac, dst))
    for dst in sorted(set(nv.flood)):
        if (ZERO_MAC, dst) not in present:
            ops.append(AddFlood(vx, dst))
    return ops


def _neigh_dels(vx: str, nv: NetworkView, have: Iterable[NeighEntry]) -> list[KernelOp]:
    want = _desired_neigh(nv)
    return [DelNeigh(vx, ip) for ip in sorted(e.ip for e in have if e.ip not in want)]


def _neigh_puts(vx: str, nv: NetworkView, have: Iterable[NeighEntry]) -> list[KernelOp]:
    by_ip = {e.ip: (e.mac, e.permanent) for e in have}
    ops: list[KernelOp] = []
    for ip, mac in sorted(_desired_neigh(nv).items()):
        if by_ip.get(ip) != (mac, True):
            ops.append(PutNeigh(vx, ip, mac))
    return ops

"""``NetworkFacts`` from the kernel backend's observed state. Pure.

``accepts`` comes from heddle's nftables table (``controller.model.nft_filter``): the member
VTEPs of the network. ``None`` (any source) only when the table is missing, which the next pass
repairs.
"""

from __future__ import annotations

from controller.diag.facts import EndpointFacts, LinkFacts, NetworkFacts, SideFacts
from controller.model.kernel_state import ZERO_MAC, EndpointSide, KernelState
from controller.model.naming import bridge_name, veth_host_name, vxlan_name
from controller.model.records import Endpoint, Host
from controller.model.view import NetworkView


def side_facts(ep: Endpoint, side: EndpointSide | None) -> SideFacts:
    """The endpoint side as observed (shared by both backends: ovs observes sides alike)."""
    if ep.netns is None:
        return SideFacts(None, ep.ifname, known=False, detail="the namespace is Docker's")
    if side is None or not side.netns_exists:
        return SideFacts(ep.netns, ep.ifname, detail=f"namespace {ep.netns} does not exist")
    if not side.present:
        return SideFacts(ep.netns, ep.ifname, detail=f"no {ep.ifname} in {ep.netns}")
    return SideFacts(
        ep.netns,
        ep.ifname,
        present=True,
        up=side.up,
        mtu=side.mtu,
        addresses=tuple(sorted(side.addresses)),
        gateway=side.gateway,
        detail="" if side.owned else "not created by heddle",
    )


def kernel_facts(host: Host, nv: NetworkView, actual: KernelState) -> NetworkFacts:
    """What ``actual`` holds for network ``nv`` on ``host`` (``observed_at`` left 0)."""
    vni = nv.network.vni
    br, vx = bridge_name(vni), vxlan_name(vni)
    brl = actual.owned(br)
    bridge = (
        LinkFacts(br, True, brl.up, brl.mtu, True, "bridge")
        if brl is not None
        else LinkFacts(br, False, detail=f"no bridge {br}")
    )
    vxl = actual.owned(vx)
    if vxl is None:
        tunnel = LinkFacts(vx, False, detail=f"no VXLAN device {vx}")
    else:
        got_vni = vxl.vxlan.vni if vxl.vxlan is not None else None
        tunnel = LinkFacts(
            vx,
            True,
            vxl.up,
            vxl.mtu,
            vxl.master == br and got_vni == vni,
            f"VNI {got_vni}, master {vxl.master or 'none'}",
        )
    forwarding = {e.mac: e.dst for e in sorted(actual.fdb.get(vx, ())) if e.mac != ZERO_MAC}
    eps = []
    for ep in nv.local:
        name = veth_host_name(ep.network, ep.id)
        link = actual.owned(name)
        veth = (
            LinkFacts(
                name, True, link.up, link.mtu, link.master == br, f"master {link.master or 'none'}"
            )
            if link is not None
            else LinkFacts(name, False, detail=f"no veth {name}")
        )
        side = side_facts(ep, actual.endpoints.get((ep.netns, ep.ifname)) if ep.netns else None)
        eps.append(EndpointFacts(ep.id, ",".join(ep.addresses), ep.mac, veth, side, veth.attached))
    return NetworkFacts(
        host.name,
        "kernel",
        host.vtep,
        nv.network.name,
        vni,
        nv.mtu,
        bridge,
        tunnel,
        forwarding,
        None,
        tuple(eps),
    )

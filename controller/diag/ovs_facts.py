"""``NetworkFacts`` from the ovs backend's observed state. Pure.

The questions are answered from the OpenFlow table that ``controller.plan.flows`` renders:
forwarding from table 20 (``dl_dst`` -> ``tun_dst``), accepted VTEPs from table 0 (``tun_id`` and
``tun_src`` on the tunnel port; ``tun_ipv6_*`` over an IPv6 underlay), delivery from table 30
(``dl_dst`` -> the endpoint's port).
Flows are found by their key (table, priority, match) built with the same canonical form the
planner uses, so a flow that is there but has other actions is reported as what it does.
"""

from __future__ import annotations

from controller.diag.facts import EndpointFacts, LinkFacts, NetworkFacts
from controller.diag.kernel_facts import side_facts
from controller.model.flow import REG_VNI, Flow, make_canonical_flow
from controller.model.naming import veth_host_name
from controller.model.ovs_state import OvsState
from controller.model.records import Host
from controller.model.view import NetworkView
from controller.plan.flows import P_MATCH, T_CLASSIFY, T_L2, T_TUNNEL
from controller.plan.ovsdb import TUNNEL_OFPORT, OvsLayout

_Key = tuple[int, int, tuple[tuple[str, str], ...]]


def _key(table: int, match: dict[str, str | int]) -> _Key:
    return make_canonical_flow(table, P_MATCH, match, []).key


def _tun_dst(flow: Flow) -> str | None:
    """The VTEP ``flow`` tunnels to (``tun_dst``, or ``tun_ipv6_dst`` over IPv6)."""
    for action in flow.actions:
        if not action.startswith("set_field:"):
            continue
        value, _, field = action[len("set_field:") :].rpartition("->")
        if field in ("tun_dst", "tun_ipv6_dst"):
            return value
    return None


def ovs_facts(layout: OvsLayout, host: Host, nv: NetworkView, actual: OvsState) -> NetworkFacts:
    """What ``actual`` holds for network ``nv`` on ``host`` (``observed_at`` left 0)."""
    vni = nv.network.vni
    brs = actual.ovsdb.bridges.get(layout.bridge)
    present = brs is not None and brs.owned
    bridge = LinkFacts(
        layout.bridge,
        present,
        present,
        0,
        present,
        "Open vSwitch bridge" if present else f"no bridge {layout.bridge}",
    )
    ports = brs.ports if brs is not None else {}
    tport = ports.get(layout.tunnel_port)
    t_ok = tport is not None and tport.ofport == TUNNEL_OFPORT
    tunnel = LinkFacts(
        layout.tunnel_port,
        tport is not None,
        t_ok,
        0,
        t_ok,
        f"ofport {tport.ofport}" if tport is not None else "no tunnel port",
    )
    flows = {f.key: f for f in actual.flows.get(layout.bridge, frozenset())}
    forwarding = {}
    for r in nv.remote:
        flow = flows.get(_key(T_L2, {REG_VNI: vni, "dl_dst": r.mac}))
        dst = _tun_dst(flow) if flow is not None else None
        if dst is not None:
            forwarding[r.mac] = dst
    probe = dict(
        _key(T_CLASSIFY, {"in_port": TUNNEL_OFPORT, "tun_id": vni, "tun_src": "0.0.0.0"})[2]
    )
    accepts = sorted(
        dict(f.match).get("tun_src") or dict(f.match).get("tun_ipv6_src", "")
        for f in flows.values()
        if f.table == T_CLASSIFY
        and dict(f.match).get("tun_id") == probe["tun_id"]
        and dict(f.match).get("in_port") == probe["in_port"]
    )
    eps = []
    for ep in nv.local:
        name = veth_host_name(ep.network, ep.id)
        link = actual.kernel.owned(name)
        port = ports.get(name)
        ofport = port.ofport if port is not None else None
        attached = ofport is not None and ofport > 0
        veth = (
            LinkFacts(
                name,
                True,
                link.up,
                link.mtu,
                attached,
                f"ofport {ofport}" if port is not None else "not a port of the bridge",
            )
            if link is not None
            else LinkFacts(name, False, detail=f"no veth {name}")
        )
        out = flows.get(_key(T_TUNNEL, {REG_VNI: vni, "dl_dst": ep.mac}))
        delivers = attached and out is not None and f"output:{ofport}" in out.actions
        side = side_facts(
            ep, actual.kernel.endpoints.get((ep.netns, ep.ifname)) if ep.netns else None
        )
        eps.append(EndpointFacts(ep.id, ",".join(ep.addresses), ep.mac, veth, side, delivers))
    return NetworkFacts(
        host.name,
        "ovs",
        host.vtep,
        nv.network.name,
        vni,
        nv.mtu,
        bridge,
        tunnel,
        forwarding,
        tuple(accepts),
        tuple(eps),
    )

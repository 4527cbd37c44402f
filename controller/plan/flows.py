"""The OpenFlow table of the ovs backend as a pure function of the host view. Pure throughout.

Pipeline on the integration bridge (no NORMAL action, no learning; ``reg6`` carries the VNI):

====== ===================================================================================
table  what
====== ===================================================================================
0      classify. From a local endpoint port: only IPv4 with the port's own source MAC and
       address, or ARP whose Ethernet/ARP sender MAC and sender address are the port's own
       (anti-spoofing) -> set reg6=VNI, IPv4 to 20, ARP to 10. From the tunnel port: only
       ``tun_id`` = VNI from the VTEP of another member host of that network -> set reg6,
       to 30; any other tunnel packet hits a drop flow of its own (priority 1: its packet
       count is the ``vxlan`` drop counter). Everything else: the default drop (priority 0:
       its count is the ``spoof`` drop counter -- forged sources on endpoint ports).
10     ARP responder: a request for any endpoint of the network (local or remote) is answered
       in place and sent back out of the input port. A request for an address nobody has is
       dropped (every endpoint is known, so nobody would answer; and no ARP crosses the
       underlay). Other ARP (replies) continues to 20.
20     from a local port: unicast to a local port, or ``tun_id``=VNI, ``tun_dst``=the owner's
       VTEP and out of the tunnel port; broadcast/multicast per input port to the other local
       members and once to each other member host (head-end replication). Else drop.
30     from the tunnel: unicast to a local port of that network, broadcast/multicast to all
       local members. Else drop (never back into the tunnel).
====== ===================================================================================

br-phy (``netdev`` datapath only) gets two flows, NIC <-> LOCAL, where the userspace datapath
pushes and pops tunnel headers (docs/platform.md O3).

Every flow carries ``COOKIE`` (ownership: observation dumps only flows with it; deletes are
cookie-scoped). ``Flow`` keeps a canonical form of match and actions, the one ``ovs-ofctl
-O OpenFlow14 dump-flows`` prints back (hex registers, ``LOCAL`` for ``output:LOCAL``, ...), so a
dumped table parses (``parse_flows``) into values that compare equal with rendered ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from controller.model.flow import DROP, REG_VNI, Flow, make_canonical_flow, make_flow
from controller.model.view import HostView, NetworkView

T_CLASSIFY, T_ARP, T_L2, T_TUNNEL = 0, 10, 20, 30
MULTICAST = "01:00:00:00:00:00/01:00:00:00:00:00"
P_DEFAULT, P_UNKNOWN_ARP, P_FLOOD, P_MATCH = 0, 50, 50, 100
P_PHY = 10
P_TUNNEL_DROP = 1
LOCAL = "LOCAL"
Match = Mapping[str, str | int]
EndpointKey = tuple[str, str]
"""``(network, endpoint id)``: how ``ofports`` name a local endpoint."""


# -- rendering ----------------------------------------------------------------------------------


def _arp_reply(mac: str, ip: str) -> list[str]:
    """Turn an ARP request for ``ip`` into the reply ``ip is-at mac``, back out of its port."""
    return [
        "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]",
        f"set_field:{mac}->eth_src",
        "set_field:2->arp_op",
        "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[]",
        f"set_field:{mac}->arp_sha",
        "move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[]",
        f"set_field:{ip}->arp_spa",
        "IN_PORT",
    ]


class _Table:
    """Flows keyed by (table, priority, match): the first flow for a key wins, so a MAC or
    address claimed twice is realised once, deterministically (the view is sorted)."""

    def __init__(self) -> None:
        self.flows: dict[tuple[int, int, tuple[tuple[str, str], ...]], Flow] = {}

    def add(
        self, table: int, priority: int, match: Mapping[str, str | int], actions: Sequence[str]
    ) -> None:
        """Add a flow whose values are already canonical (``make_canonical_flow``)."""
        flow = make_canonical_flow(table, priority, match, actions)
        self.flows.setdefault(flow.key, flow)


def render_flows(
    view: HostView, ofports: Mapping[EndpointKey, int], tunnel_ofport: int
) -> tuple[Flow, ...]:
    """The complete table of the integration bridge for ``view`` (see the module docstring).

    ``ofports`` maps each local endpoint to its (pinned) OpenFlow port; endpoints missing from it
    get no flows. Pure and deterministic (view order; not sorted, which would cost a third of
    the rendering of a 10,000-flow table); the result holds one flow per key.
    """
    t = _Table()
    t.add(T_CLASSIFY, P_DEFAULT, {}, [DROP])
    t.add(T_CLASSIFY, P_TUNNEL_DROP, {"in_port": tunnel_ofport}, [DROP])
    t.add(T_ARP, P_DEFAULT, {}, [f"goto_table:{T_L2}"])
    t.add(T_L2, P_DEFAULT, {}, [DROP])
    t.add(T_TUNNEL, P_DEFAULT, {}, [DROP])
    for nv in view.networks:
        _render_network(t, nv, ofports, tunnel_ofport)
    return tuple(t.flows.values())


def render_network_flows(
    nv: NetworkView, ofports: Mapping[EndpointKey, int], tunnel_ofport: int
) -> tuple[Flow, ...]:
    """The flows ``render_flows`` renders for network ``nv`` alone (every one of them matches
    the network's VNI, a port of its own or a tunnel source of its flood list, so no other
    network renders the same key). Pure."""
    t = _Table()
    _render_network(t, nv, ofports, tunnel_ofport)
    return tuple(t.flows.values())


def _render_network(
    t: _Table, nv: NetworkView, ofports: Mapping[EndpointKey, int], tunnel: int
) -> None:
    vni = nv.network.vni
    set_vni = f"set_field:{vni}->{REG_VNI}"
    local = [(ep, ofports[ep.network, ep.id]) for ep in nv.local if (ep.network, ep.id) in ofports]

    for vtep in nv.flood:
        match: dict[str, str | int] = {"in_port": tunnel, "tun_id": vni, "tun_src": vtep}
        t.add(T_CLASSIFY, P_MATCH, match, [set_vni, f"goto_table:{T_TUNNEL}"])
    for ep, port in local:
        if ep.ip is None:  # the view gives an ovs host IPv4 networks only
            continue
        ip_match: Match = {"ip": "", "in_port": port, "dl_src": ep.mac, "nw_src": ep.ip}
        t.add(T_CLASSIFY, P_MATCH, ip_match, [set_vni, f"goto_table:{T_L2}"])
        arp_match: Match = {
            "arp": "", "in_port": port, "dl_src": ep.mac, "arp_sha": ep.mac, "arp_spa": ep.ip,
        }  # fmt: skip
        t.add(T_CLASSIFY, P_MATCH, arp_match, [set_vni, f"goto_table:{T_ARP}"])

    owners: Iterable[tuple[str, str]] = [
        *((ep.ip, ep.mac) for ep in nv.local if ep.ip is not None),
        *((r.ip, r.mac) for r in nv.remote if r.ip is not None),
    ]
    for ip, mac in owners:
        match = {"arp": "", REG_VNI: vni, "arp_op": 1, "arp_tpa": ip}
        t.add(T_ARP, P_MATCH, match, _arp_reply(mac, ip))
    t.add(T_ARP, P_UNKNOWN_ARP, {"arp": "", REG_VNI: vni, "arp_op": 1}, [DROP])

    for ep, port in local:
        t.add(T_L2, P_MATCH, {REG_VNI: vni, "dl_dst": ep.mac}, [f"output:{port}"])
        t.add(T_TUNNEL, P_MATCH, {REG_VNI: vni, "dl_dst": ep.mac}, [f"output:{port}"])
    for r in nv.remote:
        to_vtep = [f"set_field:{vni}->tun_id", f"set_field:{r.vtep}->tun_dst", f"output:{tunnel}"]
        t.add(T_L2, P_MATCH, {REG_VNI: vni, "dl_dst": r.mac}, to_vtep)

    replicate: list[str] = []
    if nv.flood:
        replicate.append(f"set_field:{vni}->tun_id")
        for vtep in nv.flood:
            replicate += [f"set_field:{vtep}->tun_dst", f"output:{tunnel}"]
    ports = sorted({port for _, port in local})
    for port in ports:
        others = [f"output:{q}" for q in ports if q != port]
        match = {REG_VNI: vni, "in_port": port, "dl_dst": MULTICAST}
        t.add(T_L2, P_FLOOD, match, [*others, *replicate] or [DROP])
    t.add(
        T_TUNNEL,
        P_FLOOD,
        {REG_VNI: vni, "dl_dst": MULTICAST},
        [f"output:{p}" for p in ports] or [DROP],
    )


def render_phy_flows(nic_ofport: int) -> tuple[Flow, ...]:
    """br-phy's table: the underlay NIC and the bridge's LOCAL port (which carries the VTEP
    address, and where the userspace datapath pops tunnel headers) talk only to each other."""
    return tuple(
        sorted(
            (
                make_flow(T_CLASSIFY, P_DEFAULT, {}, [DROP]),
                make_flow(T_CLASSIFY, P_PHY, {"in_port": nic_ofport}, [LOCAL]),
                make_flow(T_CLASSIFY, P_PHY, {"in_port": LOCAL}, [f"output:{nic_ofport}"]),
            )
        )
    )

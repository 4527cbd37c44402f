"""The OpenFlow table of the ovs backend as a pure function of the host view. Pure throughout.

Pipeline on the integration bridge (no NORMAL action, no learning; ``reg6`` carries the VNI):

====== ===================================================================================
table  what
====== ===================================================================================
0      classify. From a local endpoint port: only IPv4 or IPv6 with the port's own source
       MAC and address, or ARP whose Ethernet/ARP sender MAC and sender address are the
       port's own, or a neighbour solicitation from its own MAC and IPv6 address
       (anti-spoofing) -> set reg6=VNI, IPv4/IPv6 to 20, ARP to 10, solicitations to 12.
       ICMPv6 that only routers or the answering side send (MLD query, router
       advertisement, neighbour advertisement, redirect) is dropped from anywhere: every
       solicitation is answered in flows, so no endpoint needs to advertise. From the tunnel
       port: only ``tun_id`` = VNI from the VTEP of another member host of that network -> set
       reg6, to 30; any other tunnel packet hits a drop flow of its own (priority 1: its
       packet count is the ``vxlan`` drop counter). Everything else: the default drop
       (priority 0). It and the ICMPv6 drops count as the ``spoof`` drop counter -- forged
       sources or router messages on endpoint ports.
10     ARP responder: a request for any endpoint of the network (local or remote) is answered
       in place and sent back out of the input port. A request for an address nobody has is
       dropped (every endpoint is known, so nobody would answer; and no ARP crosses the
       underlay). Other ARP (replies) continues to 20.
12     ND responder: a solicitation for any IPv6 endpoint of the network becomes, in place,
       the solicited advertisement of that endpoint (Ethernet and IPv6 addresses swapped in,
       ICMPv6 type 136, flags solicited|override, the source link-layer option retyped as the
       target link-layer option), then 13. A solicitation for an address nobody has is
       dropped; no neighbour discovery crosses the underlay.
13     finishes an advertisement from 12: the option's address becomes the new Ethernet
       source (OVS lets ``nd_tll`` be written only once the packet is an advertisement:
       docs/platform.md O11), and it leaves by its input port.
20     from a local port: unicast to a local port, or ``tun_id``=VNI, ``tun_dst``=the owner's
       VTEP and out of the tunnel port; broadcast/multicast, one flow per network, to the
       local members (the switch skips the input port) and once to each other member host
       (head-end replication). Else drop.
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

import functools
from collections.abc import Iterable, Mapping, Sequence

from controller.model.flow import DROP, REG_VNI, Flow, make_canonical_flow, make_flow
from controller.model.view import HostView, NetworkView

T_CLASSIFY, T_ARP, T_ND, T_ND_REPLY, T_L2, T_TUNNEL = 0, 10, 12, 13, 20, 30
MULTICAST = "01:00:00:00:00:00/01:00:00:00:00:00"
P_DEFAULT, P_UNKNOWN_ARP, P_FLOOD, P_MATCH = 0, 50, 50, 100
P_ICMP6_GUARD, P_SOLICIT = 110, 120
ICMP6_GUARDED = (130, 134, 136, 137)
"""ICMPv6 types no endpoint may send: MLD query, router advertisement, neighbour advertisement
(the ND responder answers every solicitation), redirect."""
ND_SOLICIT, ND_ADVERT = 135, 136
ND_SOLICITED_OVERRIDE = 0x60000000  # an advertisement's S and O flags, in nd_reserved
ND_TARGET_LL = 2  # the target link-layer address option
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


def tun_field(end: str, vtep: str) -> str:
    """The tunnel metadata field that holds ``vtep`` as the outer ``end`` (``src``/``dst``):
    ``tun_src``/``tun_dst`` for IPv4 VTEPs, ``tun_ipv6_src``/``tun_ipv6_dst`` for IPv6
    ones. Pure."""
    return f"tun_ipv6_{end}" if ":" in vtep else f"tun_{end}"


def _nd_advert(mac: str, ip6: str) -> list[str]:
    """Turn a solicitation for ``ip6`` into the solicited advertisement ``ip6 is-at mac`` (the
    option's address is written in table 13, once the packet is an advertisement)."""
    return [
        "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]",
        f"set_field:{mac}->eth_src",
        "move:NXM_NX_IPV6_SRC[]->NXM_NX_IPV6_DST[]",
        f"set_field:{ip6}->ipv6_src",
        f"set_field:{ND_ADVERT}->icmpv6_type",
        f"set_field:{ND_SOLICITED_OVERRIDE}->nd_reserved",
        f"set_field:{ND_TARGET_LL}->nd_options_type",
        f"goto_table:{T_ND_REPLY}",
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

    def extend(self, flows: Iterable[Flow]) -> None:
        """Add flows already made (the first per key wins, as with ``add``)."""
        for flow in flows:
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
    t.extend(fixed_flows(tunnel_ofport))
    for nv in view.networks:
        _render_network(t, nv, ofports, tunnel_ofport)
    return tuple(t.flows.values())


@functools.cache
def fixed_flows(tunnel_ofport: int) -> tuple[Flow, ...]:
    """The flows ``render_flows`` renders for no network: the tables' defaults, the tunnel
    port's drop and the ICMPv6 guards and replies. Pure (computed once per port number)."""
    t = _Table()
    t.add(T_CLASSIFY, P_DEFAULT, {}, [DROP])
    t.add(T_CLASSIFY, P_TUNNEL_DROP, {"in_port": tunnel_ofport}, [DROP])
    t.add(T_ARP, P_DEFAULT, {}, [f"goto_table:{T_L2}"])
    for icmp_type in ICMP6_GUARDED:
        t.add(T_CLASSIFY, P_ICMP6_GUARD, {"icmp6": "", "icmp_type": icmp_type}, [DROP])
    t.add(T_ND, P_DEFAULT, {}, [DROP])
    finish = ["move:NXM_OF_ETH_SRC[]->NXM_NX_ND_TLL[]", "IN_PORT"]
    t.add(T_ND_REPLY, P_MATCH, {"icmp6": "", "icmp_type": ND_ADVERT}, finish)
    t.add(T_ND_REPLY, P_DEFAULT, {}, [DROP])
    t.add(T_L2, P_DEFAULT, {}, [DROP])
    t.add(T_TUNNEL, P_DEFAULT, {}, [DROP])
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
    local = [(ep, ofports[ep.network, ep.id]) for ep in nv.local if (ep.network, ep.id) in ofports]
    for vtep in nv.flood:
        t.extend(_tunnel_in(vni, vtep, tunnel))
    for ep, port in local:
        t.extend(_guards(vni, port, ep.mac, ep.ip, ep.ip6))
    for ep in nv.local:
        t.extend(_responders(vni, ep.mac, ep.ip, ep.ip6))
    for r in nv.remote:
        t.extend(_responders(vni, r.mac, r.ip, r.ip6))
    t.add(T_ARP, P_UNKNOWN_ARP, {"arp": "", REG_VNI: vni, "arp_op": 1}, [DROP])
    for ep, port in local:
        t.extend(_to_local(vni, ep.mac, port))
    for r in nv.remote:
        t.extend(_to_remote(vni, r.mac, r.vtep, tunnel))

    replicate: list[str] = []
    if nv.flood:
        replicate.append(f"set_field:{vni}->tun_id")
        for vtep in nv.flood:
            replicate += [f"set_field:{vtep}->{tun_field('dst', vtep)}", f"output:{tunnel}"]
    ports = sorted({port for _, port in local})
    # One flood flow for every local port of the network: OpenFlow never sends a packet back
    # out of its input port unless the action names ``IN_PORT``, so each sender's copy is
    # skipped by the switch itself. (One flow per input port listing the others made every
    # local endpoint that came or went rewrite all of them: O(ports^2) per change.)
    outputs = [f"output:{q}" for q in ports] if len(ports) > 1 else []  # a lone port: itself
    t.add(T_L2, P_FLOOD, {REG_VNI: vni, "dl_dst": MULTICAST}, [*outputs, *replicate] or [DROP])
    t.add(
        T_TUNNEL,
        P_FLOOD,
        {REG_VNI: vni, "dl_dst": MULTICAST},
        [f"output:{p}" for p in ports] or [DROP],
    )


# Each endpoint's and member's flows depend on a few values only, and a network is re-rendered
# whenever one of its endpoints changes: these are rendered once per set of values (pure, so
# cached; bounded) and a re-render is mostly lookups -- it sits on the path to a new local
# endpoint's first packet.
_CACHE = 1 << 15


@functools.lru_cache(maxsize=_CACHE)
def _tunnel_in(vni: int, vtep: str, tunnel: int) -> tuple[Flow, ...]:
    """Tunnel packets of ``vni`` from member VTEP ``vtep``: accepted, to table 30."""
    match: Match = {"in_port": tunnel, "tun_id": vni, tun_field("src", vtep): vtep}
    return (_flow(T_CLASSIFY, P_MATCH, match, [_set_vni(vni), f"goto_table:{T_TUNNEL}"]),)


@functools.lru_cache(maxsize=_CACHE)
def _guards(vni: int, port: int, mac: str, ip: str | None, ip6: str | None) -> tuple[Flow, ...]:
    """What a local port may send: its own sources only (table 0's anti-spoofing)."""
    set_vni = _set_vni(vni)
    out = []
    if ip is not None:
        ip_match: Match = {"ip": "", "in_port": port, "dl_src": mac, "nw_src": ip}
        out.append(_flow(T_CLASSIFY, P_MATCH, ip_match, [set_vni, f"goto_table:{T_L2}"]))
        arp_match: Match = {
            "arp": "",
            "in_port": port,
            "dl_src": mac,
            "arp_sha": mac,
            "arp_spa": ip,
        }
        out.append(_flow(T_CLASSIFY, P_MATCH, arp_match, [set_vni, f"goto_table:{T_ARP}"]))
    if ip6 is not None:
        own6: Match = {"in_port": port, "dl_src": mac, "ipv6_src": ip6}
        ip6_match = {"ipv6": "", **own6}
        out.append(_flow(T_CLASSIFY, P_MATCH, ip6_match, [set_vni, f"goto_table:{T_L2}"]))
        solicit = {"icmp6": "", **own6, "icmp_type": ND_SOLICIT}
        out.append(_flow(T_CLASSIFY, P_SOLICIT, solicit, [set_vni, f"goto_table:{T_ND}"]))
    return tuple(out)


@functools.lru_cache(maxsize=_CACHE)
def _responders(vni: int, mac: str, ip: str | None, ip6: str | None) -> tuple[Flow, ...]:
    """The ARP and ND answers for an endpoint of the network (local or remote)."""
    out = []
    if ip is not None:
        match: Match = {"arp": "", REG_VNI: vni, "arp_op": 1, "arp_tpa": ip}
        out.append(_flow(T_ARP, P_MATCH, match, _arp_reply(mac, ip)))
    if ip6 is not None:
        match = {"icmp6": "", REG_VNI: vni, "icmp_type": ND_SOLICIT, "nd_target": ip6}
        out.append(_flow(T_ND, P_MATCH, match, _nd_advert(mac, ip6)))
    return tuple(out)


@functools.lru_cache(maxsize=_CACHE)
def _to_local(vni: int, mac: str, port: int) -> tuple[Flow, ...]:
    """Unicast to a local endpoint, from a local port (20) and from the tunnel (30)."""
    match: Match = {REG_VNI: vni, "dl_dst": mac}
    return tuple(_flow(table, P_MATCH, match, [f"output:{port}"]) for table in (T_L2, T_TUNNEL))


@functools.lru_cache(maxsize=_CACHE)
def _to_remote(vni: int, mac: str, vtep: str, tunnel: int) -> tuple[Flow, ...]:
    """Unicast to a remote endpoint: into the tunnel towards its host's VTEP."""
    to_vtep = [
        f"set_field:{vni}->tun_id", f"set_field:{vtep}->{tun_field('dst', vtep)}",
        f"output:{tunnel}",
    ]  # fmt: skip
    return (_flow(T_L2, P_MATCH, {REG_VNI: vni, "dl_dst": mac}, to_vtep),)


def _set_vni(vni: int) -> str:
    return f"set_field:{vni}->{REG_VNI}"


_flow = make_canonical_flow


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

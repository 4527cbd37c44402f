"""The nftables rules heddle writes, as libnftables JSON: the fixed shapes that both render
(``controller/model/nft_filter.py``'s ``render_sync`` and deltas) and parsing compare against,
and the names of heddle's tables, chains, sets and counters. Pure.

Each shape is what ``nft -j list`` prints back, so a listing compares equal with a rendering
(``canonical`` orders anonymous sets, whose order the kernel does not keep).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from controller.model.egress import Gateway

TABLE = "heddle"
INET_CHAIN = "input"
FORWARD_CHAIN = "forward"
NAT_CHAIN = "postrouting"
BRIDGE_CHAIN = "prerouting"
VXLAN_DROPPED = "vxlan_dropped"
SPOOF_DROPPED = "spoof_dropped"
HOST_DROPPED = "host_dropped"
ROUTED_DROPPED = "routed_dropped"
PRIORITY = -200
NAT_PRIORITY = 100
BRIDGES = "hdb*"  # every heddle Linux bridge (controller/model/naming.py)
VXLANS = "hdx*"  # every heddle VXLAN device (controller/model/naming.py)
VXLAN_PORT = 4789
ADVERTS = "adverts"  # the verdict map: endpoint port -> jump to its advert chain
ADVERT_CHAIN_PREFIX = "na_"

Json = dict[str, Any]


def _udp_4789() -> Json:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                      "right": VXLAN_PORT}}  # fmt: skip


def _vni_saddr(ip: str) -> Json:
    return {"concat": [{"payload": {"base": "th", "offset": 96, "len": 24}},
                       {"payload": {"protocol": ip, "field": "saddr"}}]}  # fmt: skip


def vxlan_tail_rule() -> list[Json]:
    return [_udp_4789(), {"counter": VXLAN_DROPPED}, {"drop": None}]


def _is(key: str, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}}


def host_rules() -> list[list[Json]]:
    """The fixed rules that start chain ``input``: what an overlay may reach on the host.
    Each starts with the name compare, so a packet from the underlay costs one compare per
    rule (the gateways' elements all name heddle bridges: the same verdicts)."""
    to_gateway = {"concat": [{"meta": {"key": "iifname"}},
                             {"payload": {"protocol": "ip", "field": "daddr"}}]}  # fmt: skip
    return [
        [
            _is("iifname", BRIDGES),
            {"match": {"op": "==", "left": to_gateway, "right": "@gateways"}},
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "icmp", "field": "type"}},
                    "right": "echo-request",
                }
            },
            {"accept": None},
        ],
        [_is("iifname", BRIDGES), {"counter": HOST_DROPPED}, {"drop": None}],
    ]


def forward_rules(egress: bool) -> list[list[Json]]:
    """The fixed rules of chain ``forward``: with ``egress`` (some network has it on this
    host), egress out and its replies in; nothing else either way. The replies' rule is the
    only ``ct`` expression, and conntrack runs for every packet of the namespace while one
    exists, so it is there only when egress needs it."""
    loop = {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]}
    drops = [
        [_is("iifname", BRIDGES), {"counter": ROUTED_DROPPED}, {"drop": None}],
        [_is("oifname", BRIDGES), {"counter": ROUTED_DROPPED}, {"drop": None}],
    ]
    if not egress:
        return [
            [{"match": {"op": "==", "left": loop, "right": "@loops"}}, {"accept": None}],
            *drops,
        ]
    return [
        [{"match": {"op": "==", "left": loop, "right": "@loops"}}, {"accept": None}],
        [_is("iifname", "@egress"), _is("oifname", BRIDGES, "!="), {"accept": None}],
        [
            _is("oifname", "@egress"),
            {
                "match": {
                    "op": "in",
                    "left": {"ct": {"key": "state"}},
                    "right": ["established", "related"],
                }
            },
            {"accept": None},
        ],
        *drops,
    ]


def masquerade_rule(gw: Gateway) -> list[Json]:
    addr, length = gw.subnet.split("/")
    return [
        _is("iifname", gw.bridge),
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"prefix": {"addr": addr, "len": int(length)}}}},
        _is("oifname", BRIDGES, "!="),
        {"masquerade": None},
    ]  # fmt: skip


def _iif_concat(*fields: tuple[str, str]) -> Json:
    parts: list[Json] = [{"meta": {"key": "iifname"}}]
    parts += [{"payload": {"protocol": p, "field": f}} for p, f in fields]
    return {"concat": parts}


#: ICMPv6 an endpoint may not send: a router's and a querier's messages (it is neither), and
#: neighbour advertisements, which ``advert_chain`` admits for the endpoint's own address only.
_ICMPV6_REFUSED = ["mld-listener-query", "nd-router-advert", "nd-neighbor-advert", "nd-redirect"]


def target_int(ip: str) -> str:
    """An IPv6 address as the 128-bit integer ``@th,64,128`` (an advert's target) reads."""
    return f"0x{int(ipaddress.IPv6Address(ip)):032x}"


def advert_chain(port: str) -> str:
    """The regular chain that admits ``port``'s neighbour advertisements (``na_<port>``)."""
    return f"{ADVERT_CHAIN_PREFIX}{port}"


def advert_target_rule(ip: str) -> list[Json]:
    """The one rule of an advert chain: the advertisement's target (bits 64..191 of the
    ICMPv6 header, compared as a 128-bit integer: libnftables 1.0.6 has no ``icmpv6 taddr``,
    docs/platform.md K16) is the endpoint's own address."""
    return [
        {"match": {"op": "==", "left": {"payload": {"base": "th", "offset": 64, "len": 128}},
                   "right": target_int(ip)}},
        {"accept": None},
    ]  # fmt: skip


def advert_cmds(verb: str, port: str, ip: str) -> list[Json]:
    """Add (chain, its rule, then the map element) or delete (element, then the chain) one
    port's advert chain: in an order the kernel accepts within one batch."""
    chain = advert_chain(port)
    elem = [[port, {"jump": {"target": chain}}]]
    if verb == "add":
        return [
            {"add": nft_obj("chain", "bridge", name=chain)},
            {"flush": nft_obj("chain", "bridge", name=chain)},
            {"add": nft_obj("rule", "bridge", chain=chain, expr=advert_target_rule(ip))},
            {"add": nft_obj("element", "bridge", name=ADVERTS, elem=elem)},
        ]
    return [
        {"delete": nft_obj("element", "bridge", name=ADVERTS, elem=elem)},
        {"flush": nft_obj("chain", "bridge", name=chain)},
        {"delete": nft_obj("chain", "bridge", name=chain)},
    ]


def bridge_rules() -> list[list[Json]]:
    """The fixed rules of chain ``prerouting`` (in the form ``nft -j list`` prints).

    Ordered for the common case: a frame from a VXLAN device costs one compare, an IPv4 frame
    from an endpoint one compare and one lookup, an IPv6 one a lookup more. The verdicts are
    those of "unguarded port: pass; else the guards decide": a VXLAN device is never guarded,
    and a frame the guards admit comes from a guarded port. IPv6 from an endpoint: its own
    (port, MAC, address), and of ICMPv6 no router or querier message and no neighbour
    advertisement but for its own address (its port's chain in the verdict map ``adverts``,
    ``advert_chain``: a port without one has its adverts dropped). Its neighbour solicitations pass:
    the VXLAN device answers them from the agent's entries (``proxy``), so none crosses the
    underlay. An IPv6 packet from the unspecified address (duplicate address detection, MLD
    without a link-local address: heddle's addresses need neither) matches no guard."""
    guards4, guards6 = "@guards", "@guards6"
    own6 = {"match": {"op": "==", "left": _iif_concat(("ether", "saddr"), ("ip6", "saddr")),
                      "right": guards6}}  # fmt: skip
    return [
        [_is("iifname", VXLANS), {"accept": None}],
        [
            {"match": {"op": "==", "left": _iif_concat(("ether", "saddr"), ("ip", "saddr")),
                       "right": guards4}},
            {"accept": None},
        ],
        [own6, {"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}}, "right": "ipv6-icmp"}},
         {"accept": None}],
        [own6, {"match": {"op": "!=", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
                          "right": {"set": _ICMPV6_REFUSED}}},
         {"accept": None}],
        [
            {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
                       "right": "nd-neighbor-advert"}},
            own6,
            {"vmap": {"key": {"meta": {"key": "iifname"}}, "data": f"@{ADVERTS}"}},
        ],
        [
            {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "@guarded"}},
            {"accept": None},
        ],
        [
            {"match": {"op": "==", "left": _iif_concat(("ether", "saddr"), ("arp", "saddr ip")),
                       "right": guards4}},
            {"match": {"op": "==", "left": _iif_concat(("arp", "saddr ether"), ("arp", "saddr ip")),
                       "right": guards4}},
            {"accept": None},
        ],
        [{"counter": SPOOF_DROPPED}, {"drop": None}],
    ]  # fmt: skip


def nft_obj(kind: str, family: str, **fields: Any) -> Json:
    return {kind: {"family": family, "table": TABLE, **fields}}


def base_chain(
    family: str, name: str, hook: str, kind: str = "filter", prio: int = PRIORITY
) -> Json:
    return nft_obj("chain", family, name=name, type=kind, hook=hook, prio=prio,
                policy="accept")  # fmt: skip


def members_rule(members: Sequence[tuple[int, Sequence[str]]]) -> list[list[Json]]:
    """The rules that accept VXLAN from members: one for IPv4 VTEPs, one for IPv6 ones, each
    only when it has an element (an anonymous set cannot be empty; with none, the tail rule
    drops all VXLAN)."""
    rules = []
    for ip, six in (("ip", False), ("ip6", True)):
        elems = [{"concat": [vni, vtep]} for vni, vteps in members for vtep in vteps
                 if (":" in vtep) == six]  # fmt: skip
        if elems:
            rules.append([
                _udp_4789(),
                {"match": {"op": "==", "left": _vni_saddr(ip), "right": {"set": elems}}},
                {"accept": None},
            ])  # fmt: skip
    return rules


def canonical(rules: list[Any]) -> list[Any]:
    """``rules`` with every anonymous set's elements in one order (the kernel may list them in
    any), so two listings of the same rules compare equal."""
    out = []
    for rule in rules:
        canon = []
        for stmt in rule:
            right = stmt.get("match", {}).get("right") if isinstance(stmt, dict) else None
            if isinstance(right, dict) and isinstance(right.get("set"), list):
                elems = sorted(right["set"], key=lambda e: json.dumps(e, sort_keys=True))
                stmt = {"match": {**stmt["match"], "right": {"set": elems}}}
            canon.append(stmt)
        out.append(canon)
    return out

"""The nftables rules heddle writes in table ``inet heddle``, as libnftables JSON: the fixed
shapes that both render (``controller/model/nft_filter.py``'s ``render_sync``) and parsing
compare against, and the names of heddle's tables, chains, sets and counters (the endpoint
ports' guards are ``controller/model/nft_guards.py``). Pure.

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
VXLAN_DROPPED = "vxlan_dropped"
SPOOF_DROPPED = "spoof_dropped"
HOST_DROPPED = "host_dropped"
ROUTED_DROPPED = "routed_dropped"
PRIORITY = -200
NAT_PRIORITY = 100
BRIDGES = "hdb*"  # every heddle Linux bridge (controller/model/naming.py)
VXLAN_PORT = 4789

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


def target_int(ip: str) -> str:
    """An IPv6 address as the 128-bit integer ``@th,64,128`` (an advert's target) reads."""
    return f"0x{int(ipaddress.IPv6Address(ip)):032x}"


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

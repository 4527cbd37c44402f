"""Anti-spoofing on the kernel backend's endpoint ports, as libnftables JSON. Pure.

Table ``netdev heddle`` holds one base chain per guarded port: ``g_<port>``, hook ``ingress``
on the port (the host side of the endpoint's veth), priority -200. A frame the endpoint sends
passes it before the bridge sees the frame, so nothing the bridge does (it learns nothing
anyway) depends on a forged frame. The chain's rules, for the endpoint's MAC *M*, IPv4
addresses *A4* and IPv6 addresses *A6* (``guard_rules``):

- ``ether saddr != M counter name spoof_dropped drop``;
- with *A4*: ``ip saddr A4 accept``; ``arp saddr ether M arp saddr ip A4 accept``;
- with *A6*: ``ip6 saddr A6`` passes unless it is ICMPv6 that a router or querier sends or a
  neighbour advertisement, which passes only for one of the port's own addresses (bits 64..191
  of the ICMPv6 header, the target; libnftables 1.0.6 has no ``icmpv6 taddr``, docs/platform.md
  K16); its neighbour solicitations pass (the VXLAN device answers them: ``proxy``);
- ``counter name spoof_dropped drop``: everything else (another source, another protocol, a
  VLAN tag).

Why per-port chains and not one bridge-family chain: a bridge hook runs for every frame the
bridge forwards, the ones from the VXLAN device included, and those are most of an overlay's
frames; an ingress chain on the endpoint's port runs only for what the endpoint sends
(README, performance: the filters' throughput).

A port's chain can be written only once its device exists (Linux 6.1, Debian 12's kernel,
refuses a hook on a missing device; later kernels accept it) and on 6.1 it disappears with its
device (later kernels keep it, detached: docs/platform.md K19). So the planner writes it right
after the veth and before the endpoint comes up, and the driver deletes it "absent is
success".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.model.nft_rules import PRIORITY, SPOOF_DROPPED, TABLE, Json, canonical, target_int

NETDEV = "netdev"
GUARD_CHAIN_PREFIX = "g_"

#: ICMPv6 an endpoint may not send: a router's and a querier's messages (it is neither), and
#: neighbour advertisements, which are admitted for the port's own addresses only.
ICMPV6_REFUSED = ["mld-listener-query", "nd-router-advert", "nd-neighbor-advert", "nd-redirect"]


@dataclass(frozen=True, slots=True, order=True)
class PortGuard:
    """Frames entering the host from ``port`` must come from ``mac`` / ``ip`` (IPv4 or IPv6: an
    endpoint of a dual-stack network has one guard per address)."""

    port: str
    mac: str
    ip: str

    @property
    def six(self) -> bool:
        return ":" in self.ip


def guard_chain(port: str) -> str:
    """The name of ``port``'s chain (``g_<port>``)."""
    return f"{GUARD_CHAIN_PREFIX}{port}"


def _obj(kind: str, **fields: Any) -> Json:
    return {kind: {"family": NETDEV, "table": TABLE, **fields}}


def _eq(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def _one_or_set(values: Sequence[str]) -> Any:
    """As ``nft -j list`` prints a match on ``values``: one value bare, several as a set."""
    return values[0] if len(values) == 1 else {"set": sorted(values)}


def guard_rules(guards: Sequence[PortGuard]) -> list[list[Json]]:
    """The rules of one port's chain for ``guards`` (all of that port, one MAC; non-empty), in
    the form ``nft -j list`` prints them."""
    mac = guards[0].mac
    four = sorted(g.ip for g in guards if not g.six)
    six = sorted(g.ip for g in guards if g.six)
    rules: list[list[Json]] = [
        [_eq(_payload("ether", "saddr"), mac, "!="), {"counter": SPOOF_DROPPED}, {"drop": None}]
    ]
    if four:
        rules.append([_eq(_payload("ip", "saddr"), _one_or_set(four)), {"accept": None}])
        rules.append([
            _eq(_payload("arp", "saddr ether"), mac),
            _eq(_payload("arp", "saddr ip"), _one_or_set(four)),
            {"accept": None},
        ])  # fmt: skip
    if six:
        own6 = _eq(_payload("ip6", "saddr"), _one_or_set(six))
        icmp_type = _payload("icmpv6", "type")
        rules.append([own6, _eq({"meta": {"key": "l4proto"}}, "ipv6-icmp", "!="), {"accept": None}])
        rules.append([own6, _eq(icmp_type, {"set": ICMPV6_REFUSED}, "!="), {"accept": None}])
        target = {"payload": {"base": "th", "offset": 64, "len": 128}}
        for ip in six:
            rules.append([
                _eq(icmp_type, "nd-neighbor-advert"), own6, _eq(target, target_int(ip)),
                {"accept": None},
            ])  # fmt: skip
    rules.append([{"counter": SPOOF_DROPPED}, {"drop": None}])
    return rules


def _table_cmds() -> list[Json]:
    return [
        {"add": {"table": {"family": NETDEV, "name": TABLE}}},
        {"add": _obj("counter", name=SPOOF_DROPPED)},
    ]


def render_guard(port: str, guards: Sequence[PortGuard]) -> Json:
    """One batch that makes ``port``'s chain hold exactly ``guards``' rules (creating the table,
    the counter and the chain if missing; the counter keeps its value). Atomic: the port is
    never without its chain's old or new rules."""
    chain = guard_chain(port)
    cmds = [
        *_table_cmds(),
        {"add": _obj("chain", name=chain, type="filter", hook="ingress", dev=port,
                     prio=PRIORITY, policy="accept")},
        {"flush": _obj("chain", name=chain)},
    ]  # fmt: skip
    cmds += [{"add": _obj("rule", chain=chain, expr=expr)} for expr in guard_rules(guards)]
    return {"nftables": cmds}


def render_unguard(port: str) -> Json:
    """One batch that deletes ``port``'s chain (its rules first: the kernel deletes only an
    empty chain). Fails, changing nothing, when the chain is absent."""
    chain = guard_chain(port)
    return {"nftables": [{verb: _obj("chain", name=chain)} for verb in ("flush", "delete")]}


def parse_guards(objects: Sequence[Json]) -> dict[str, tuple[PortGuard, ...]]:
    """The guards ``nft -j list table netdev heddle`` shows, by port: each chain ``g_<port>``
    with exactly the rules ``guard_rules`` writes for some guards gives those guards; any other
    chain of that name (hand-edited, another hook) gives ``()``. Never raises."""
    try:
        return _parse_guards(objects)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return {}


def _parse_guards(objects: Sequence[Json]) -> dict[str, tuple[PortGuard, ...]]:
    hooked: set[str] = set()
    rules: dict[str, list[Any]] = {}
    for obj in objects:
        if "chain" in obj and obj["chain"].get("family") == NETDEV:
            c = obj["chain"]
            name = str(c.get("name", ""))
            if name.startswith(GUARD_CHAIN_PREFIX):
                rules.setdefault(name, [])
                if (c.get("type"), c.get("hook"), c.get("prio")) == ("filter", "ingress", PRIORITY):
                    hooked.add(name)
        elif "rule" in obj and obj["rule"].get("family") == NETDEV:
            r = obj["rule"]
            rules.setdefault(str(r.get("chain", "")), []).append(r.get("expr"))
    out: dict[str, tuple[PortGuard, ...]] = {}
    for chain, exprs in rules.items():
        if not chain.startswith(GUARD_CHAIN_PREFIX):
            continue
        port = chain[len(GUARD_CHAIN_PREFIX) :]
        try:
            guards = _read_guards(port, exprs) if chain in hooked else ()
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            guards = ()
        out[port] = guards
    return out


def _values(right: Any) -> list[str]:
    return [str(v) for v in right["set"]] if isinstance(right, dict) else [str(right)]


def _read_guards(port: str, exprs: list[Any]) -> tuple[PortGuard, ...]:
    """The guards whose rules ``exprs`` are, or ``()``."""
    mac = str(exprs[0][0]["match"]["right"])
    ips: list[str] = []
    for expr in exprs[1:]:
        left = expr[0].get("match", {}).get("left", {}).get("payload", {})
        if (left.get("protocol"), left.get("field")) in (("ip", "saddr"), ("ip6", "saddr")):
            ips += _values(expr[0]["match"]["right"])
    guards = tuple(sorted({PortGuard(port, mac, ip) for ip in ips}))
    if not guards or canonical(exprs) != canonical(guard_rules(guards)):
        return ()
    return guards

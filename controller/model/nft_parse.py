"""Reading heddle's nftables tables back: ``parse_tables`` turns what ``nft -j list table``
prints for its tables into the ``FilterSpec`` table ``inet heddle`` holds
(``controller/model/nft_filter.py``), or ``None`` when it is not exactly what ``render_sync``
writes for it -- the planner then rewrites it -- and the endpoint ports' guards of table
``netdev heddle`` (``controller/model/nft_guards.py``). Pure; never raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.model.egress import Gateway
from controller.model.naming import bridge_name
from controller.model.nft_filter import BRIDGE, VNI_SET_PREFIX, FilterSpec, make_spec
from controller.model.nft_guards import PortGuard, parse_guards
from controller.model.nft_rules import (
    FORWARD_CHAIN,
    INET_CHAIN,
    NAT_CHAIN,
    NAT_PRIORITY,
    PRIORITY,
    TABLE,
    Json,
    forward_rules,
    host_rules,
    masquerade_rule,
    members_rule,
    vxlan_tail_rule,
)


@dataclass(frozen=True, slots=True)
class FilterListing:
    """What an observation found: ``spec`` (``None`` when table ``inet heddle`` is missing or
    holds rules of another shape, or an earlier release's -- the planner then rewrites it),
    ``vni_sets``: the earlier releases' per-network sets present (a sync deletes them),
    counters of both tables, ``guards``: the ports' guard chains (``nft_guards.parse_guards``),
    ``bridge``: whether an earlier release's table ``bridge heddle`` is there."""

    spec: FilterSpec | None
    vni_sets: tuple[int, ...] = ()
    drops: Mapping[str, int] | None = None
    guards: Mapping[str, tuple[PortGuard, ...]] = field(default_factory=dict)
    bridge: bool = False


def _elements(raw: Any) -> list[Any]:
    return list(raw) if isinstance(raw, list) else []


def parse_tables(objects: Sequence[Json]) -> FilterListing:
    """Parse the ``nftables`` objects of ``nft -j list table`` for heddle's tables. Never
    raises: anything unexpected makes ``spec`` ``None`` (so the next apply rewrites the table)
    or a port's guards ``()`` (so the next apply rewrites its chain)."""
    try:
        return _parse(objects)
    except (KeyError, TypeError, ValueError, AttributeError):
        return FilterListing(None)


def _parse(objects: Sequence[Json]) -> FilterListing:
    tables: set[str] = set()
    legacy: list[int] = []
    inet_sets: dict[str, list[Any]] = {}
    rules: dict[tuple[str, str], list[Any]] = {}
    drops: dict[str, int] = {}
    chains: set[tuple[str, str]] = set()
    for obj in objects:
        if "table" in obj and obj["table"].get("name") == TABLE:
            tables.add(obj["table"]["family"])
        elif "set" in obj:
            s = obj["set"]
            if s["family"] == "inet" and s["name"].startswith(VNI_SET_PREFIX):
                legacy.append(int(s["name"][len(VNI_SET_PREFIX) :]))
            elif s["family"] == "inet":
                inet_sets[s["name"]] = _elements(s.get("elem"))
        elif "counter" in obj:
            c = obj["counter"]
            if c["family"] != BRIDGE:
                drops[c["name"]] = int(c.get("packets", 0))
        elif "chain" in obj:
            c = obj["chain"]
            if (c.get("hook"), c.get("prio")) in _HOOKS.get((c["family"], c["name"]), ()):
                chains.add((c["family"], c["name"]))
        elif "rule" in obj:
            r = obj["rule"]
            rules.setdefault((r["family"], r["chain"]), []).append(r["expr"])
    gateways = _gateways(inet_sets, rules.get(("inet", NAT_CHAIN), []))
    members = _members(inet_sets.get("loops", []), rules.get(("inet", INET_CHAIN), []))
    shaped = (
        "inet" in tables
        and not legacy
        and members is not None
        and chains == set(_HOOKS) - ({("inet", NAT_CHAIN)} if not gateways else set())
        and rules.get(("inet", FORWARD_CHAIN), []) == forward_rules(bool(gateways))
    )
    spec = (
        make_spec(members, gateways or ())
        if shaped and members is not None and gateways is not None
        else None
    )
    return FilterListing(
        spec, tuple(sorted(legacy)), drops, parse_guards(objects), bridge=BRIDGE in tables
    )


def _members(loops: list[Any], inet_input: list[Any]) -> dict[int, list[str]] | None:
    """VNI -> member VTEPs, from the set ``loops`` (which networks) and chain ``input`` (their
    members); ``None`` when the chain is not exactly what ``render_sync`` writes for them."""
    members: dict[int, list[str]] = {}
    for e in loops:
        a, b = e["concat"]
        vni = int(str(a)[3:], 16)
        if a != b or bridge_name(vni) != a:
            return None
        members[vni] = []
    head, tail = host_rules(), [vxlan_tail_rule()]
    if inet_input[: len(head)] != head or inet_input[-1:] != tail:
        return None
    middle = inet_input[len(head) : -1]
    if len(middle) > 2:
        return None
    listed = []
    for rule in middle:
        elems = rule[1]["match"]["right"]["set"]
        for e in elems:
            vni, vtep = e["concat"]
            if vni not in members:
                return None
            members[vni].append(str(vtep))
        in_order = sorted(elems, key=lambda e: (e["concat"][0], str(e["concat"][1])))
        listed.append([rule[0], {"match": {**rule[1]["match"], "right": {"set": in_order}}},
                       *rule[2:]])  # fmt: skip
    if listed != members_rule(make_spec(members).members):
        return None
    return members


_HOOKS: Mapping[tuple[str, str], tuple[tuple[str, int], ...]] = {
    ("inet", INET_CHAIN): (("input", PRIORITY),),
    ("inet", FORWARD_CHAIN): (("forward", PRIORITY),),
    ("inet", NAT_CHAIN): (("postrouting", NAT_PRIORITY),),
}


def _gateways(sets: Mapping[str, list[Any]], nat: list[Any]) -> tuple[Gateway, ...] | None:
    """The gateways the sets ``gateways`` and ``egress`` and the masquerade rules describe
    together; ``None`` when they do not describe the same ones (rewrite the tables)."""
    addresses = {str(e["concat"][0]): str(e["concat"][1]) for e in sets.get("gateways", [])}
    out: list[Gateway] = []
    for expr in nat:
        bridge = str(expr[0]["match"]["right"])
        prefix = expr[1]["match"]["right"]["prefix"]
        if not bridge.startswith("hdb") or bridge not in addresses:
            return None
        vni = int(bridge[3:], 16)
        gw = Gateway(vni, f"{prefix['addr']}/{prefix['len']}", addresses[bridge], prefix["len"])
        if masquerade_rule(gw) != expr:
            return None
        out.append(gw)
    bridges = sorted(g.bridge for g in out)
    if sorted(addresses) != bridges or sorted(map(str, sets.get("egress", []))) != bridges:
        return None
    return tuple(out)

"""Reading heddle's nftables tables back: ``parse_tables`` turns what ``nft -j list table``
prints for both tables into the ``FilterSpec`` they hold (``controller/model/nft_filter.py``),
or ``None`` when they are not exactly what ``render_sync`` writes for it -- the planner then
rewrites them. Pure; never raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.model.egress import Gateway
from controller.model.naming import bridge_name
from controller.model.nft_filter import (
    VNI_SET_PREFIX,
    FilterSpec,
    PortGuard,
    adverts_of,
    make_spec,
)
from controller.model.nft_rules import (
    ADVERT_CHAIN_PREFIX,
    ADVERTS,
    BRIDGE_CHAIN,
    FORWARD_CHAIN,
    INET_CHAIN,
    NAT_CHAIN,
    NAT_PRIORITY,
    PRIORITY,
    TABLE,
    Json,
    advert_chain,
    advert_target_rule,
    bridge_rules,
    canonical,
    forward_rules,
    host_rules,
    masquerade_rule,
    members_rule,
    vxlan_tail_rule,
)


@dataclass(frozen=True, slots=True)
class FilterListing:
    """What an observation found: ``spec`` (``None`` when a table is missing or holds rules of
    another shape, or an earlier release's -- the planner then rewrites it), ``vni_sets``: the
    earlier releases' per-network sets present (a sync deletes them), ``advert_chains``: the
    advert chains present (a sync deletes those no port wants), counters."""

    spec: FilterSpec | None
    vni_sets: tuple[int, ...] = ()
    drops: Mapping[str, int] | None = None
    advert_chains: tuple[str, ...] = ()


def _elements(raw: Any) -> list[Any]:
    return list(raw) if isinstance(raw, list) else []


def parse_tables(objects: Sequence[Json]) -> FilterListing:
    """Parse the ``nftables`` objects of ``nft -j list table`` for both tables. Never raises:
    anything unexpected makes ``spec`` ``None`` (so the next apply rewrites the tables)."""
    try:
        return _parse(objects)
    except (KeyError, TypeError, ValueError, AttributeError):
        return FilterListing(None)


def _parse(objects: Sequence[Json]) -> FilterListing:
    tables: set[str] = set()
    legacy: list[int] = []
    guards: list[PortGuard] = []
    guarded: list[str] = []
    inet_sets: dict[str, list[Any]] = {}
    rules: dict[tuple[str, str], list[Any]] = {}
    drops: dict[str, int] = {}
    chains: set[tuple[str, str]] = set()
    adverts: dict[str, str] | None = None  # port -> the chain the map jumps to
    advert_chains: list[str] = []
    for obj in objects:
        if "table" in obj and obj["table"].get("name") == TABLE:
            tables.add(obj["table"]["family"])
        elif "set" in obj:
            s = obj["set"]
            if s["family"] == "inet" and s["name"].startswith(VNI_SET_PREFIX):
                legacy.append(int(s["name"][len(VNI_SET_PREFIX) :]))
            elif s["family"] == "inet":
                inet_sets[s["name"]] = _elements(s.get("elem"))
            elif s["family"] == "bridge" and s["name"] in ("guards", "guards6"):
                for e in _elements(s.get("elem")):
                    port, mac, ip = e["concat"]
                    guards.append(PortGuard(str(port), str(mac), str(ip)))
            elif s["family"] == "bridge" and s["name"] == "guarded":
                guarded = [str(e) for e in _elements(s.get("elem"))]
        elif "map" in obj:
            m = obj["map"]
            if m["family"] == "bridge" and m["name"] == ADVERTS:
                adverts = {str(k): str(v["jump"]["target"]) for k, v in _elements(m.get("elem"))}
        elif "counter" in obj:
            c = obj["counter"]
            drops[c["name"]] = int(c.get("packets", 0))
        elif "chain" in obj:
            c = obj["chain"]
            if (c.get("hook"), c.get("prio")) in _HOOKS.get((c["family"], c["name"]), ()):
                chains.add((c["family"], c["name"]))
            elif c["family"] == "bridge" and str(c["name"]).startswith(ADVERT_CHAIN_PREFIX):
                advert_chains.append(str(c["name"]))
        elif "rule" in obj:
            r = obj["rule"]
            rules.setdefault((r["family"], r["chain"]), []).append(r["expr"])
    gateways = _gateways(inet_sets, rules.get(("inet", NAT_CHAIN), []))
    members = _members(inet_sets.get("loops", []), rules.get(("inet", INET_CHAIN), []))
    shaped = (
        tables == {"inet", "bridge"}
        and not legacy
        and members is not None
        and chains == set(_HOOKS) - ({("inet", NAT_CHAIN)} if not gateways else set())
        and rules.get(("inet", FORWARD_CHAIN), []) == forward_rules(bool(gateways))
        and canonical(rules.get(("bridge", BRIDGE_CHAIN), [])) == canonical(bridge_rules())
        and sorted(set(guarded)) == sorted({g.port for g in guards})
        and _adverts_hold(adverts, rules, adverts_of(guards))
    )
    spec = (
        make_spec(members, guards, gateways or ())
        if shaped and members is not None and gateways is not None
        else None
    )
    return FilterListing(spec, tuple(sorted(legacy)), drops, tuple(sorted(advert_chains)))


def _adverts_hold(
    adverts: Mapping[str, str] | None,
    rules: Mapping[tuple[str, str], list[Any]],
    want: Mapping[str, str],
) -> bool:
    """Whether the map ``adverts`` jumps, for exactly the ports of ``want``, to each one's
    advert chain, and that chain holds exactly the rule for its address."""
    if adverts is None or adverts != {p: advert_chain(p) for p in want}:
        return False
    return all(rules.get(("bridge", advert_chain(p)), []) == [advert_target_rule(ip)]
               for p, ip in want.items())  # fmt: skip


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
    if listed != members_rule(make_spec(members, ()).members):
        return None
    return members


_HOOKS: Mapping[tuple[str, str], tuple[tuple[str, int], ...]] = {
    ("inet", INET_CHAIN): (("input", PRIORITY),),
    ("inet", FORWARD_CHAIN): (("forward", PRIORITY),),
    ("inet", NAT_CHAIN): (("postrouting", NAT_PRIORITY),),
    ("bridge", BRIDGE_CHAIN): (("prerouting", PRIORITY),),
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

"""The kernel backend's packet filters as data, and their nftables JSON form. Pure.

Two tables, both named ``heddle`` and owned by the agent (nothing else in them, nothing of
anyone else's touched):

``inet heddle`` -- VXLAN accepted only from members. Chain ``input`` (filter hook, priority
-200), after the two rules about overlay traffic to the host (below): one rule ``udp dport 4789
@th,96,24 . ip saddr { <VNI> . <VTEP>, ... } accept`` (bits 96..119 of the transport header are
the VXLAN header's VNI; the set holds, per network, the VTEPs of its other member hosts); then
``udp dport 4789 counter name vxlan_dropped drop``: any other VXLAN packet -- unknown VNI, a
non-member source, a member of another network -- is dropped and counted. One lookup per
packet whatever the number of networks: the set is anonymous (libnftables 1.0.6's JSON cannot
declare a named set keyed by a raw 24-bit field), so it is rewritten with its rule, in the
same atomic batch that rewrites every rule. Which networks the host filters for is the set
``loops`` (one element per network, below), so a network without other members yet is still
known. Earlier releases kept one rule and one set ``vni_<VNI>`` per network; a sync deletes
such sets (``FilterListing.vni_sets``).

``bridge heddle`` -- anti-spoofing on endpoint ports. Chain ``prerouting`` (priority -200, so
before the bridge learns anything): a frame from a VXLAN device (``hdx*``, never guarded) or
from a port not in the set ``guarded`` passes; from a guarded port it passes only if (port,
source MAC, source IPv4) or, for ARP, both (port, source MAC, sender IP) and (port, sender
MAC, sender IP) are in the set ``guards``, or (port, source MAC, source IPv6) is in the set
``guards6`` and it is no ICMPv6 a router or querier sends, and a neighbour advertisement only
for its own address (``bridge_rules``); everything else is dropped and counted
(``spoof_dropped``).

``inet heddle`` also keeps what the overlays may reach through the host (the Linux bridges
``hdb*`` are heddle's): chain ``input`` starts with ``iifname "hdb*" iifname . ip daddr
@gateways icmp type echo-request accept`` (an endpoint may ping its egress gateway) and
``iifname "hdb*" counter name host_dropped drop`` (nothing else from an overlay reaches the host
itself: not its VTEP, not etcd, not another overlay's gateway). Chain ``forward`` (priority
-200): traffic within one bridge passes (``iifname . oifname @loops``: only where bridged frames
are sent through the IP hooks, K6), an egress bridge's traffic to anything but a heddle bridge
passes, and so do the replies to it (``ct state established,related``); everything else from or
to a heddle bridge is dropped and counted (``routed_dropped``): no overlay routes into another.
Chain ``postrouting`` (nat, priority 100): per egress network ``iifname <bridge> ip saddr
<subnet> oifname != "hdb*" masquerade``. The replies' rule and the NAT chain exist only while
this host has an egress network: either one makes the kernel run connection tracking on every
packet of the namespace (the VXLAN traffic included), which costs throughput and buys nothing
without egress.

The rules are fixed shapes; what changes are set elements and the members' rule. Each rule is
ordered so the packets the overlay carries cost the least: a VXLAN packet two string compares
and one lookup, a frame from a VXLAN port one compare, an endpoint's IPv4 frame one compare
and one lookup. A
``FilterSpec`` is both what the planner wants and what an observation found (``parse_tables``),
so converged means equal. ``render_sync`` writes one batch that replaces heddle's rules and
elements and keeps the named counters (nftables applies a batch atomically: there is no moment
without a filter).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.model.egress import Gateway
from controller.model.naming import bridge_name

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
_VNI_SET = "vni_"  # earlier releases' per-network sets, deleted by a sync

Json = dict[str, Any]


@dataclass(frozen=True, slots=True, order=True)
class PortGuard:
    """Frames entering the bridge from ``port`` must come from ``mac`` / ``ip`` (IPv4 or IPv6:
    an endpoint of a dual-stack network has one guard per address)."""

    port: str
    mac: str
    ip: str

    @property
    def six(self) -> bool:
        return ":" in self.ip


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """``members``: VNI -> the VTEPs accepted for it (sorted). ``guards``: sorted by port.
    ``gateways``: the egress gateways of this host (``controller/model/egress.py``), by VNI."""

    members: tuple[tuple[int, tuple[str, ...]], ...] = ()
    guards: tuple[PortGuard, ...] = ()
    gateways: tuple[Gateway, ...] = ()

    def union(self, other: FilterSpec) -> FilterSpec:
        """Everything either allows (what is in force while a change is half-way). Egress is
        not widened: ``other``'s gateways are the ones in force (a bridge holds one address
        for the gateway it is planned for, not the union)."""
        merged: dict[int, set[str]] = {}
        for vni, vteps in (*self.members, *other.members):
            merged.setdefault(vni, set()).update(vteps)
        return make_spec(
            {v: tuple(s) for v, s in merged.items()},
            set(self.guards) | set(other.guards),
            other.gateways,
        )

    def accepts(self, vni: int) -> tuple[str, ...] | None:
        """The VTEPs accepted for ``vni`` (``()`` none; ``None`` is never returned here:
        an unknown VNI is dropped)."""
        return dict(self.members).get(vni, ())


def make_spec(
    members: Mapping[int, Sequence[str]],
    guards: Sequence[PortGuard] | set[PortGuard],
    gateways: Sequence[Gateway] = (),
) -> FilterSpec:
    """A canonical ``FilterSpec`` (sorted, so equal contents compare equal)."""
    return FilterSpec(
        tuple(sorted((vni, tuple(sorted(set(v)))) for vni, v in members.items())),
        tuple(sorted(set(guards))),
        tuple(sorted(set(gateways))),
    )


# -- rendering ----------------------------------------------------------------------------


def _udp_4789() -> Json:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                      "right": VXLAN_PORT}}  # fmt: skip


def _vni_saddr(ip: str) -> Json:
    return {"concat": [{"payload": {"base": "th", "offset": 96, "len": 24}},
                       {"payload": {"protocol": ip, "field": "saddr"}}]}  # fmt: skip


def members_rule(spec: FilterSpec) -> list[list[Json]]:
    """The rules that accept VXLAN from members: one for IPv4 VTEPs, one for IPv6 ones, each
    only when it has an element (an anonymous set cannot be empty; with none, the tail rule
    drops all VXLAN)."""
    rules = []
    for ip, six in (("ip", False), ("ip6", True)):
        elems = [{"concat": [vni, vtep]} for vni, vteps in spec.members for vtep in vteps
                 if (":" in vtep) == six]  # fmt: skip
        if elems:
            rules.append([
                _udp_4789(),
                {"match": {"op": "==", "left": _vni_saddr(ip), "right": {"set": elems}}},
                {"accept": None},
            ])  # fmt: skip
    return rules


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


def _target(ip: str) -> str:
    """An IPv6 address as the 128-bit integer ``@th,64,128`` (an advert's target) reads."""
    return f"0x{int(ipaddress.IPv6Address(ip)):032x}"


ADVERTS = "adverts"  # the verdict map: endpoint port -> jump to its advert chain
_ADVERT_CHAIN = "na_"


def advert_chain(port: str) -> str:
    """The regular chain that admits ``port``'s neighbour advertisements (``na_<port>``)."""
    return f"{_ADVERT_CHAIN}{port}"


def advert_chains(spec: FilterSpec) -> tuple[str, ...]:
    """The advert chains ``spec``'s tables hold, sorted."""
    return tuple(sorted(advert_chain(p) for p in _adverts(spec.guards)))


def _advert_target(ip: str) -> list[Json]:
    """The one rule of an advert chain: the advertisement's target (bits 64..191 of the
    ICMPv6 header, compared as a 128-bit integer: libnftables 1.0.6 has no ``icmpv6 taddr``)
    is the endpoint's own address."""
    return [
        {"match": {"op": "==", "left": {"payload": {"base": "th", "offset": 64, "len": 128}},
                   "right": _target(ip)}},
        {"accept": None},
    ]  # fmt: skip


def _adverts(guards: Sequence[PortGuard]) -> dict[str, str]:
    """Port -> its IPv6 address, for the ports with an IPv6 guard."""
    return {g.port: g.ip for g in guards if g.six}


def _advert_cmds(verb: str, port: str, ip: str) -> list[Json]:
    """Add (chain, its rule, then the map element) or delete (element, then the chain) one
    port's advert chain: in an order the kernel accepts within one batch."""
    chain = advert_chain(port)
    elem = [[port, {"jump": {"target": chain}}]]
    if verb == "add":
        return [
            {"add": _obj("chain", "bridge", name=chain)},
            {"flush": _obj("chain", "bridge", name=chain)},
            {"add": _obj("rule", "bridge", chain=chain, expr=_advert_target(ip))},
            {"add": _obj("element", "bridge", name=ADVERTS, elem=elem)},
        ]
    return [
        {"delete": _obj("element", "bridge", name=ADVERTS, elem=elem)},
        {"flush": _obj("chain", "bridge", name=chain)},
        {"delete": _obj("chain", "bridge", name=chain)},
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


def _obj(kind: str, family: str, **fields: Any) -> Json:
    return {kind: {"family": family, "table": TABLE, **fields}}


def _chain(family: str, name: str, hook: str, kind: str = "filter", prio: int = PRIORITY) -> Json:
    return _obj("chain", family, name=name, type=kind, hook=hook, prio=prio,
                policy="accept")  # fmt: skip


def render_sync(
    spec: FilterSpec, stale_vnis: Sequence[int] = (), stale_adverts: Sequence[str] = ()
) -> Json:
    """One batch that makes both tables hold exactly ``spec`` (``stale_vnis``: earlier releases'
    per-network sets found by the last observation, deleted after the rules that used them;
    ``stale_adverts``: advert chains found that no port wants, deleted once the map that
    jumps to them is flushed). Creates what is missing, keeps the named counters and their
    values."""
    cmds: list[Json] = [
        {"add": {"table": {"family": "inet", "name": TABLE}}},
        {"add": _obj("counter", "inet", name=VXLAN_DROPPED)},
        {"add": _obj("counter", "inet", name=HOST_DROPPED)},
        {"add": _obj("counter", "inet", name=ROUTED_DROPPED)},
        {"add": _chain("inet", INET_CHAIN, "input")},
        {"add": _chain("inet", FORWARD_CHAIN, "forward")},
        {"add": _chain("inet", NAT_CHAIN, "postrouting", "nat", NAT_PRIORITY)},
        {"flush": _obj("chain", "inet", name=INET_CHAIN)},
        {"flush": _obj("chain", "inet", name=FORWARD_CHAIN)},
        {"flush": _obj("chain", "inet", name=NAT_CHAIN)},
    ]
    if not spec.gateways:  # no NAT chain without egress: it would run conntrack (see above)
        cmds.append({"delete": _obj("chain", "inet", name=NAT_CHAIN)})
    sets = {
        "gateways": (["ifname", "ipv4_addr"],
                     [{"concat": [g.bridge, g.address]} for g in spec.gateways]),
        "egress": ("ifname", [g.bridge for g in spec.gateways]),
        "loops": (["ifname", "ifname"],
                  [{"concat": [bridge_name(v), bridge_name(v)]} for v, _ in spec.members]),
    }  # fmt: skip
    for name, (kind, elems) in sets.items():
        cmds.append({"add": _obj("set", "inet", name=name, type=kind)})
        cmds.append({"flush": _obj("set", "inet", name=name)})
        if elems:
            cmds.append({"add": _obj("element", "inet", name=name, elem=elems)})
    for expr in host_rules():
        cmds.append({"add": _obj("rule", "inet", chain=INET_CHAIN, expr=expr)})
    for expr in forward_rules(bool(spec.gateways)):
        cmds.append({"add": _obj("rule", "inet", chain=FORWARD_CHAIN, expr=expr)})
    for gw in spec.gateways:
        cmds.append({"add": _obj("rule", "inet", chain=NAT_CHAIN, expr=masquerade_rule(gw))})
    for vni in sorted(set(stale_vnis)):
        cmds.append({"delete": _obj("set", "inet", name=f"{_VNI_SET}{vni}")})
    for expr in members_rule(spec):
        cmds.append({"add": _obj("rule", "inet", chain=INET_CHAIN, expr=expr)})
    cmds.append({"add": _obj("rule", "inet", chain=INET_CHAIN, expr=vxlan_tail_rule())})

    cmds += [
        {"add": {"table": {"family": "bridge", "name": TABLE}}},
        {"add": _obj("counter", "bridge", name=SPOOF_DROPPED)},
        {"add": _obj("set", "bridge", name="guards", type=["ifname", "ether_addr", "ipv4_addr"])},
        {"add": _obj("set", "bridge", name="guards6", type=["ifname", "ether_addr", "ipv6_addr"])},
        {"add": _obj("set", "bridge", name="guarded", type="ifname")},
        {"add": _obj("map", "bridge", name=ADVERTS, type="ifname", map="verdict")},
        {"add": _chain("bridge", BRIDGE_CHAIN, "prerouting")},
        {"flush": _obj("chain", "bridge", name=BRIDGE_CHAIN)},
        {"flush": _obj("set", "bridge", name="guards")},
        {"flush": _obj("set", "bridge", name="guards6")},
        {"flush": _obj("set", "bridge", name="guarded")},
        {"flush": _obj("map", "bridge", name=ADVERTS)},
    ]
    wanted = _adverts(spec.guards)
    for chain in sorted(set(stale_adverts) - {advert_chain(p) for p in wanted}):
        cmds.append({"flush": _obj("chain", "bridge", name=chain)})
        cmds.append({"delete": _obj("chain", "bridge", name=chain)})
    for port, ip in sorted(wanted.items()):
        cmds += _advert_cmds("add", port, ip)
    for name, six in (("guards", False), ("guards6", True)):
        elems = [{"concat": [g.port, g.mac, g.ip]} for g in spec.guards if g.six == six]
        if elems:
            cmds.append({"add": _obj("element", "bridge", name=name, elem=elems)})
    if spec.guards:
        ports = sorted({g.port for g in spec.guards})
        cmds.append({"add": _obj("element", "bridge", name="guarded", elem=ports)})
    for expr in bridge_rules():
        cmds.append({"add": _obj("rule", "bridge", chain=BRIDGE_CHAIN, expr=expr)})
    return {"nftables": cmds}


def render_guard_delta(have: FilterSpec, want: FilterSpec) -> Json | None:
    """The batch that takes tables holding ``have`` to ``want`` when only the guards differ
    (a local endpoint came or went): the guards' elements added and deleted, nothing else
    touched (and for IPv6 guards their ports' advert chains). ``None`` when anything else
    differs (``render_sync`` then). The deletes fail the whole batch, changing nothing, when
    the tables do not hold ``have``'s elements."""
    if (have.members, have.gateways) != (want.members, want.gateways) or have == want:
        return None
    gone, new = set(have.guards) - set(want.guards), set(want.guards) - set(have.guards)
    ports_gone = {g.port for g in have.guards} - {g.port for g in want.guards}
    ports_new = {g.port for g in want.guards} - {g.port for g in have.guards}
    cmds: list[Json] = []
    for verb, guards, ports in (("delete", gone, ports_gone), ("add", new, ports_new)):
        for name, six in (("guards", False), ("guards6", True)):
            elems = [{"concat": [g.port, g.mac, g.ip]} for g in sorted(guards) if g.six == six]
            if elems:
                cmds.append({verb: _obj("element", "bridge", name=name, elem=elems)})
        if ports:
            cmds.append({verb: _obj("element", "bridge", name="guarded", elem=sorted(ports))})
    before, after = _adverts(have.guards), _adverts(want.guards)
    for port in sorted(before):
        if after.get(port) != before[port]:
            cmds[:0] = _advert_cmds("delete", port, before[port])  # before its guard goes
    for port in sorted(after):
        if before.get(port) != after[port]:
            cmds += _advert_cmds("add", port, after[port])
    return {"nftables": cmds}


FAMILIES = ("inet", "bridge")
LIST_TABLES: Json = {"nftables": [{"list": {"tables": None}}]}


def render_list(family: str) -> Json:
    """The command that lists heddle's table of ``family`` (one per batch: libnftables 1.0.6
    refuses two ``list table`` commands in one JSON batch)."""
    return {"nftables": [{"list": {"table": {"family": family, "name": TABLE}}}]}


def ours(objects: Sequence[Json]) -> tuple[str, ...]:
    """The families in which a ``LIST_TABLES`` answer shows a table of heddle's."""
    return tuple(
        o["table"]["family"]
        for o in objects
        if "table" in o and o["table"].get("name") == TABLE and o["table"].get("family") in FAMILIES
    )


def render_delete() -> Json:
    """Remove both tables (what ``heddle`` never does on its own: for tests and teardown)."""
    return {"nftables": [{"delete": {"table": {"family": f, "name": TABLE}}} for f in FAMILIES]}


# -- parsing ------------------------------------------------------------------------------


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
            if s["family"] == "inet" and s["name"].startswith(_VNI_SET):
                legacy.append(int(s["name"][len(_VNI_SET) :]))
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
            elif c["family"] == "bridge" and str(c["name"]).startswith(_ADVERT_CHAIN):
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
        and _canonical(rules.get(("bridge", BRIDGE_CHAIN), [])) == _canonical(bridge_rules())
        and sorted(set(guarded)) == sorted({g.port for g in guards})
        and _adverts_hold(adverts, rules, _adverts(guards))
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
    return all(rules.get(("bridge", advert_chain(p)), []) == [_advert_target(ip)]
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
    if listed != members_rule(make_spec(members, ())):
        return None
    return members


def _canonical(rules: list[Any]) -> list[Any]:
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

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
and one lookup. A ``FilterSpec`` is both what the planner wants and what an observation
found (``controller/model/nft_parse.py``), so converged means equal. The rules' shapes are in
``controller/model/nft_rules.py``. ``render_sync`` writes one batch that replaces heddle's rules and
elements and keeps the named counters (nftables applies a batch atomically: there is no moment
without a filter).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.model.egress import Gateway
from controller.model.naming import bridge_name
from controller.model.nft_rules import (
    ADVERTS,
    BRIDGE_CHAIN,
    FORWARD_CHAIN,
    HOST_DROPPED,
    INET_CHAIN,
    NAT_CHAIN,
    NAT_PRIORITY,
    ROUTED_DROPPED,
    SPOOF_DROPPED,
    TABLE,
    VXLAN_DROPPED,
    Json,
    advert_chain,
    advert_cmds,
    base_chain,
    bridge_rules,
    forward_rules,
    host_rules,
    masquerade_rule,
    members_rule,
    nft_obj,
    vxlan_tail_rule,
)

__all__ = [  # the rule shapes' names callers read here (kernel driver, metrics, tests)
    "HOST_DROPPED",
    "LIST_TABLES",
    "ROUTED_DROPPED",
    "SPOOF_DROPPED",
    "TABLE",
    "VXLAN_DROPPED",
    "FilterSpec",
    "PortGuard",
    "advert_chains",
    "make_spec",
    "ours",
    "render_delete",
    "render_guard_delta",
    "render_list",
    "render_sync",
]

VNI_SET_PREFIX = "vni_"  # earlier releases' per-network sets, deleted by a sync


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


# -- what the spec says about the rules ---------------------------------------------------


def advert_chains(spec: FilterSpec) -> tuple[str, ...]:
    """The advert chains ``spec``'s tables hold, sorted."""
    return tuple(sorted(advert_chain(p) for p in adverts_of(spec.guards)))


def adverts_of(guards: Sequence[PortGuard]) -> dict[str, str]:
    """Port -> its IPv6 address, for the ports with an IPv6 guard."""
    return {g.port: g.ip for g in guards if g.six}


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
        {"add": nft_obj("counter", "inet", name=VXLAN_DROPPED)},
        {"add": nft_obj("counter", "inet", name=HOST_DROPPED)},
        {"add": nft_obj("counter", "inet", name=ROUTED_DROPPED)},
        {"add": base_chain("inet", INET_CHAIN, "input")},
        {"add": base_chain("inet", FORWARD_CHAIN, "forward")},
        {"add": base_chain("inet", NAT_CHAIN, "postrouting", "nat", NAT_PRIORITY)},
        {"flush": nft_obj("chain", "inet", name=INET_CHAIN)},
        {"flush": nft_obj("chain", "inet", name=FORWARD_CHAIN)},
        {"flush": nft_obj("chain", "inet", name=NAT_CHAIN)},
    ]
    if not spec.gateways:  # no NAT chain without egress: it would run conntrack (see above)
        cmds.append({"delete": nft_obj("chain", "inet", name=NAT_CHAIN)})
    sets = {
        "gateways": (["ifname", "ipv4_addr"],
                     [{"concat": [g.bridge, g.address]} for g in spec.gateways]),
        "egress": ("ifname", [g.bridge for g in spec.gateways]),
        "loops": (["ifname", "ifname"],
                  [{"concat": [bridge_name(v), bridge_name(v)]} for v, _ in spec.members]),
    }  # fmt: skip
    for name, (kind, elems) in sets.items():
        cmds.append({"add": nft_obj("set", "inet", name=name, type=kind)})
        cmds.append({"flush": nft_obj("set", "inet", name=name)})
        if elems:
            cmds.append({"add": nft_obj("element", "inet", name=name, elem=elems)})
    for expr in host_rules():
        cmds.append({"add": nft_obj("rule", "inet", chain=INET_CHAIN, expr=expr)})
    for expr in forward_rules(bool(spec.gateways)):
        cmds.append({"add": nft_obj("rule", "inet", chain=FORWARD_CHAIN, expr=expr)})
    for gw in spec.gateways:
        cmds.append({"add": nft_obj("rule", "inet", chain=NAT_CHAIN, expr=masquerade_rule(gw))})
    for vni in sorted(set(stale_vnis)):
        cmds.append({"delete": nft_obj("set", "inet", name=f"{VNI_SET_PREFIX}{vni}")})
    for expr in members_rule(spec.members):
        cmds.append({"add": nft_obj("rule", "inet", chain=INET_CHAIN, expr=expr)})
    cmds.append({"add": nft_obj("rule", "inet", chain=INET_CHAIN, expr=vxlan_tail_rule())})

    cmds += [
        {"add": {"table": {"family": "bridge", "name": TABLE}}},
        {"add": nft_obj("counter", "bridge", name=SPOOF_DROPPED)},
        {
            "add": nft_obj(
                "set", "bridge", name="guards", type=["ifname", "ether_addr", "ipv4_addr"]
            )
        },
        {
            "add": nft_obj(
                "set", "bridge", name="guards6", type=["ifname", "ether_addr", "ipv6_addr"]
            )
        },
        {"add": nft_obj("set", "bridge", name="guarded", type="ifname")},
        {"add": nft_obj("map", "bridge", name=ADVERTS, type="ifname", map="verdict")},
        {"add": base_chain("bridge", BRIDGE_CHAIN, "prerouting")},
        {"flush": nft_obj("chain", "bridge", name=BRIDGE_CHAIN)},
        {"flush": nft_obj("set", "bridge", name="guards")},
        {"flush": nft_obj("set", "bridge", name="guards6")},
        {"flush": nft_obj("set", "bridge", name="guarded")},
        {"flush": nft_obj("map", "bridge", name=ADVERTS)},
    ]
    wanted = adverts_of(spec.guards)
    for chain in sorted(set(stale_adverts) - {advert_chain(p) for p in wanted}):
        cmds.append({"flush": nft_obj("chain", "bridge", name=chain)})
        cmds.append({"delete": nft_obj("chain", "bridge", name=chain)})
    for port, ip in sorted(wanted.items()):
        cmds += advert_cmds("add", port, ip)
    for name, six in (("guards", False), ("guards6", True)):
        elems = [{"concat": [g.port, g.mac, g.ip]} for g in spec.guards if g.six == six]
        if elems:
            cmds.append({"add": nft_obj("element", "bridge", name=name, elem=elems)})
    if spec.guards:
        ports = sorted({g.port for g in spec.guards})
        cmds.append({"add": nft_obj("element", "bridge", name="guarded", elem=ports)})
    for expr in bridge_rules():
        cmds.append({"add": nft_obj("rule", "bridge", chain=BRIDGE_CHAIN, expr=expr)})
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
                cmds.append({verb: nft_obj("element", "bridge", name=name, elem=elems)})
        if ports:
            cmds.append({verb: nft_obj("element", "bridge", name="guarded", elem=sorted(ports))})
    before, after = adverts_of(have.guards), adverts_of(want.guards)
    for port in sorted(before):
        if after.get(port) != before[port]:
            cmds[:0] = advert_cmds("delete", port, before[port])  # before its guard goes
    for port in sorted(after):
        if before.get(port) != after[port]:
            cmds += advert_cmds("add", port, after[port])
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

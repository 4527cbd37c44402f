"""The kernel backend's packet filters as data, and their nftables JSON form. Pure.

Two tables, both named ``heddle`` and owned by the agent (nothing else in them, nothing of
anyone else's touched). This module is the first:

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

``netdev heddle`` -- anti-spoofing on endpoint ports: one ingress chain per guarded port
(``controller/model/nft_guards.py``), written by its own op next to the port's veth. Earlier
releases kept it in one chain of a table ``bridge heddle``; the agent deletes that table once
every port's own chain is in place.

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
and one lookup. A ``FilterSpec`` is both what the planner wants and what an observation
found (``controller/model/nft_parse.py``), so converged means equal. The rules' shapes are in
``controller/model/nft_rules.py``. ``render_sync`` writes one batch that replaces the table's
rules and elements and keeps the named counters (nftables applies a batch atomically: there is
no moment without a filter).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.model.egress import Gateway
from controller.model.naming import bridge_name
from controller.model.nft_guards import NETDEV
from controller.model.nft_rules import (
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
    base_chain,
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
    "make_spec",
    "ours",
    "render_delete",
    "render_drop_bridge",
    "render_list",
    "render_sync",
]

VNI_SET_PREFIX = "vni_"  # earlier releases' per-network sets, deleted by a sync
BRIDGE = "bridge"  # an earlier release's guards (render_drop_bridge)


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """``members``: VNI -> the VTEPs accepted for it (sorted). ``gateways``: the egress
    gateways of this host (``controller/model/egress.py``), by VNI."""

    members: tuple[tuple[int, tuple[str, ...]], ...] = ()
    gateways: tuple[Gateway, ...] = ()

    def union(self, other: FilterSpec) -> FilterSpec:
        """Everything either allows (what is in force while a change is half-way). Egress is
        not widened: ``other``'s gateways are the ones in force (a bridge holds one address
        for the gateway it is planned for, not the union)."""
        merged: dict[int, set[str]] = {}
        for vni, vteps in (*self.members, *other.members):
            merged.setdefault(vni, set()).update(vteps)
        return make_spec({v: tuple(s) for v, s in merged.items()}, other.gateways)

    def accepts(self, vni: int) -> tuple[str, ...]:
        """The VTEPs accepted for ``vni`` (``()`` none: an unknown VNI is dropped)."""
        return dict(self.members).get(vni, ())


def make_spec(members: Mapping[int, Sequence[str]], gateways: Sequence[Gateway] = ()) -> FilterSpec:
    """A canonical ``FilterSpec`` (sorted, so equal contents compare equal)."""
    return FilterSpec(
        tuple(sorted((vni, tuple(sorted(set(v)))) for vni, v in members.items())),
        tuple(sorted(set(gateways))),
    )


# -- what the spec says about the rules ---------------------------------------------------


def render_sync(spec: FilterSpec, stale_vnis: Sequence[int] = ()) -> Json:
    """One batch that makes table ``inet heddle`` hold exactly ``spec`` (``stale_vnis``: earlier
    releases' per-network sets found by the last observation, deleted after the rules that used
    them). Creates what is missing, keeps the named counters and their values."""
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

    return {"nftables": cmds}


def render_drop_bridge() -> Json:
    """Delete an earlier release's table ``bridge heddle`` (its guards now live in ``netdev
    heddle``). Fails, changing nothing, when it is absent."""
    return {"nftables": [{"delete": {"table": {"family": BRIDGE, "name": TABLE}}}]}


FAMILIES = ("inet", NETDEV, BRIDGE)
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


def render_delete(families: Sequence[str]) -> Json:
    """Remove heddle's tables in ``families`` (``ours`` of a listing), which must exist
    (what ``heddle`` never does on its own: for tests and teardown)."""
    return {"nftables": [{"delete": {"table": {"family": f, "name": TABLE}}} for f in families]}

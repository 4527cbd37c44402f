"""The nftables filter model: canonical specs, the union used while a change is half-way, the
ports' guard chains, and parsers that never raise on what a listing may hold (hypothesis).
The JSON itself is held to libnftables by the kernel driver's integration tests and the
security e2e tests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controller.model.egress import Gateway
from controller.model.nft_filter import FilterSpec, make_spec, render_drop_bridge, render_sync
from controller.model.nft_guards import (
    PortGuard,
    guard_chain,
    parse_guards,
    render_guard,
    render_unguard,
)
from controller.model.nft_parse import parse_tables

G1 = PortGuard("hdv1", "02:00:00:00:00:01", "10.0.0.1")
G2 = PortGuard("hdv2", "02:00:00:00:00:02", "10.0.0.2")
TH = '"base": "th"'  # the VXLAN header's VNI, read by the members' rule


def test_specs_are_canonical_and_union_admits_both() -> None:
    a = make_spec({7: ["192.0.2.2", "192.0.2.1"]})
    assert a == make_spec({7: ["192.0.2.1", "192.0.2.2", "192.0.2.1"]})
    b = make_spec({7: ["192.0.2.3"], 9: []})
    u = a.union(b)
    assert dict(u.members) == {7: ("192.0.2.1", "192.0.2.2", "192.0.2.3"), 9: ()}
    assert u.accepts(7) == ("192.0.2.1", "192.0.2.2", "192.0.2.3") and u.accepts(8) == ()


def test_a_sync_batch_keeps_counters_and_deletes_an_earlier_layouts_sets() -> None:
    """Earlier releases kept a set ``vni_<VNI>`` per network: a sync deletes those it is told
    of, after the flush that removes the rules using them."""
    batch = render_sync(make_spec({7: ["192.0.2.1"]}), stale_vnis=(7, 8))["nftables"]
    deletes = [c["delete"] for c in batch if "delete" in c]
    assert deletes == [
        {"chain": {"family": "inet", "table": "heddle", "name": "postrouting"}},  # no egress
        {"set": {"family": "inet", "table": "heddle", "name": "vni_7"}},
        {"set": {"family": "inet", "table": "heddle", "name": "vni_8"}},
    ]
    input_chain = {"family": "inet", "table": "heddle", "name": "input"}
    flush = batch.index({"flush": {"chain": input_chain}})
    assert flush < min(i for i, c in enumerate(batch) if "set" in c.get("delete", {}))
    assert not any("delete" in c and "counter" in c["delete"] for c in batch)
    assert not any("delete" in c and "table" in c["delete"] for c in batch)


def _listing(batch: list[dict[str, Any]], shuffle: bool = False) -> list[dict[str, Any]]:
    """What ``nft -j list table`` would show after ``batch`` ran on empty tables (enough of
    libnftables' form for the parser; the real round trip is in the kernel driver's
    integration tests)."""
    out: list[dict[str, Any]] = []
    sets: dict[tuple[str, str], dict[str, Any]] = {}
    for cmd in batch:
        if "delete" in cmd:
            ((kind, body),) = cmd["delete"].items()
            out = [o for o in out if o.get(kind, {}).get("name") != body["name"]]
        if "add" not in cmd:
            continue
        ((kind, body),) = cmd["add"].items()
        if kind == "element":
            sets[(body["family"], body["name"])].setdefault("elem", []).extend(body["elem"])
        elif kind == "set":
            sets[(body["family"], body["name"])] = dict(body)
            out.append({"set": sets[(body["family"], body["name"])]})
        elif kind == "rule":
            expr = json.loads(json.dumps(body["expr"]))
            for m in expr:
                right = m.get("match", {}).get("right")
                if shuffle and isinstance(right, dict) and "set" in right:
                    right["set"].reverse()
            out.append({"rule": {**body, "expr": expr}})
        else:
            out.append({kind: dict(body)})
    return out


def test_members_are_one_rule_and_read_back_in_any_order() -> None:
    """One rule holds every VNI . VTEP pair (one lookup per packet however many networks); a
    network without other members yet is kept by the set ``loops``; the listing's element
    order does not matter."""
    spec = make_spec({7: ["192.0.2.2", "192.0.2.1"], 9: [], 0xFFFFFF: ["192.0.2.9"]})
    batch = render_sync(spec)["nftables"]
    member_rules = [c for c in batch if "rule" in c.get("add", {}) and TH in json.dumps(c)]
    assert len(member_rules) == 1
    for shuffle in (False, True):
        got = parse_tables(_listing(batch, shuffle))
        assert got.spec == spec and got.vni_sets == ()
    lone = make_spec({9: []})
    assert not any(TH in json.dumps(c) for c in render_sync(lone)["nftables"])
    assert parse_tables(_listing(render_sync(lone)["nftables"])).spec == lone


def test_an_earlier_layout_is_read_as_no_filter_and_its_sets_named() -> None:
    listing = _listing(render_sync(make_spec({7: ["192.0.2.1"]}))["nftables"])
    listing.append({"set": {"family": "inet", "table": "heddle", "name": "vni_7",
                            "type": "ipv4_addr", "elem": ["192.0.2.1"]}})  # fmt: skip
    got = parse_tables(listing)
    assert got.spec is None and got.vni_sets == (7,)


def test_connection_tracking_is_asked_for_only_with_egress() -> None:
    """A ``ct`` expression or a NAT chain makes the kernel track every packet of the host's
    namespace: the batch has neither unless a network has egress here."""
    gw = Gateway(7, "10.7.0.0/24", "10.7.0.1", 24)
    plain = json.dumps(render_sync(make_spec({7: ["192.0.2.1"]})))
    assert '"ct"' not in plain and '"masquerade"' not in plain
    egress = render_sync(make_spec({7: ["192.0.2.1"]}, (gw,)))["nftables"]
    assert '"ct"' in json.dumps(egress) and not any("delete" in c for c in egress)


def test_an_empty_listing_is_no_filter() -> None:
    assert parse_tables([]).spec is None
    assert FilterSpec().members == ()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=15,
)
KEYS = st.sampled_from(["table", "set", "rule", "chain", "counter", "other"])


@given(st.lists(st.dictionaries(KEYS, JSON, max_size=2), max_size=6))
def test_the_parser_never_raises(objects: list[dict[str, object]]) -> None:
    parse_tables(objects)  # type: ignore[arg-type]


# -- the ports' guards (table netdev heddle) ----------------------------------------------

MAC = st.sampled_from(["02:00:00:00:00:01", "02:aa:00:00:00:02"])
IP4 = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.9.0.3"])
IP6 = st.sampled_from(["fd00::1", "fd00::2", "fd00:9::3"])


def test_a_guard_is_one_chain_on_its_port_written_in_one_batch() -> None:
    batch = render_guard("hdv1", (G1,))["nftables"]
    chain = [c["add"]["chain"] for c in batch if "chain" in c.get("add", {})]
    want = {"family": "netdev", "table": "heddle", "name": "g_hdv1", "type": "filter",
            "hook": "ingress", "dev": "hdv1", "prio": -200, "policy": "accept"}  # fmt: skip
    assert chain == [want]
    assert {"flush": {"chain": {"family": "netdev", "table": "heddle", "name": "g_hdv1"}}} in batch
    assert not any("delete" in c for c in batch)  # the counter keeps its value
    assert render_unguard("hdv1")["nftables"] == [
        {"flush": {"chain": {"family": "netdev", "table": "heddle", "name": "g_hdv1"}}},
        {"delete": {"chain": {"family": "netdev", "table": "heddle", "name": "g_hdv1"}}},
    ]
    assert guard_chain("hdv1") == "g_hdv1"
    assert render_drop_bridge()["nftables"] == [
        {"delete": {"table": {"family": "bridge", "name": "heddle"}}}
    ]


@given(MAC, st.sets(IP4, max_size=3), st.sets(IP6, max_size=3), st.booleans())
def test_guards_read_back_as_written(mac: str, v4: set[str], v6: set[str], rev: bool) -> None:
    """Whatever addresses a port has, both families, the listing of its chain (in any element
    order) reads back as exactly its guards; the table's other objects change nothing."""
    guards = tuple(sorted(PortGuard("hdv7", mac, ip) for ip in v4 | v6))
    if not guards:
        return
    listing = _listing(render_guard("hdv7", guards)["nftables"], rev)
    assert parse_guards(listing) == {"hdv7": guards}
    assert parse_tables(listing).guards == {"hdv7": guards}


def test_a_chain_of_another_shape_reads_as_no_guards() -> None:
    listing = _listing(render_guard("hdv1", (G1,))["nftables"])
    rule = next(o for o in listing if "rule" in o)
    rule["rule"]["expr"][0]["match"]["right"] = "02:00:00:00:00:99"  # hand-edited: another MAC
    listing.append({"rule": {**rule["rule"]}})  # and one more rule
    assert parse_guards(listing) == {"hdv1": ()}
    unhooked = [o for o in _listing(render_guard("hdv1", (G1,))["nftables"]) if "chain" not in o]
    unhooked.append({"chain": {"family": "netdev", "table": "heddle", "name": "g_hdv1"}})
    assert parse_guards(unhooked) == {"hdv1": ()}


def test_an_earlier_releases_bridge_table_is_noticed() -> None:
    old = {"family": "bridge", "name": "spoof_dropped", "packets": 9}
    listing = [{"table": {"family": "bridge", "name": "heddle"}}, {"counter": old}]
    got = parse_tables(listing)
    assert got.bridge and got.guards == {} and "spoof_dropped" not in (got.drops or {})


@given(st.lists(st.dictionaries(KEYS, JSON, max_size=2), max_size=6))
def test_the_guards_parser_never_raises(objects: list[dict[str, object]]) -> None:
    parse_guards(objects)  # type: ignore[arg-type]

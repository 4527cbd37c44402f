"""The nftables filter model: canonical specs, the union used while a change is half-way, and
a parser that never raises on what a listing may hold (hypothesis). The JSON itself is held to
libnftables by the kernel driver's integration tests and the security e2e tests."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from controller.model.egress import Gateway
from controller.model.nft_filter import (
    FilterSpec,
    PortGuard,
    make_spec,
    parse_tables,
    render_sync,
)

G1 = PortGuard("hdv1", "02:00:00:00:00:01", "10.0.0.1")
G2 = PortGuard("hdv2", "02:00:00:00:00:02", "10.0.0.2")


def test_specs_are_canonical_and_union_admits_both() -> None:
    a = make_spec({7: ["192.0.2.2", "192.0.2.1"]}, [G2, G1])
    assert a == make_spec({7: ["192.0.2.1", "192.0.2.2", "192.0.2.1"]}, {G1, G2})
    b = make_spec({7: ["192.0.2.3"], 9: []}, [G1])
    u = a.union(b)
    assert dict(u.members) == {7: ("192.0.2.1", "192.0.2.2", "192.0.2.3"), 9: ()}
    assert u.guards == (G1, G2)
    assert u.accepts(7) == ("192.0.2.1", "192.0.2.2", "192.0.2.3") and u.accepts(8) == ()


def test_a_sync_batch_keeps_counters_and_deletes_only_stale_sets() -> None:
    batch = render_sync(make_spec({7: ["192.0.2.1"]}, [G1]), stale_vnis=(7, 8))["nftables"]
    deletes = [c["delete"] for c in batch if "delete" in c]
    assert deletes == [
        {"chain": {"family": "inet", "table": "heddle", "name": "postrouting"}},  # no egress
        {"set": {"family": "inet", "table": "heddle", "name": "vni_8"}},
    ]
    assert not any("delete" in c and "counter" in c["delete"] for c in batch)
    assert not any("delete" in c and "table" in c["delete"] for c in batch)


def test_connection_tracking_is_asked_for_only_with_egress() -> None:
    """A ``ct`` expression or a NAT chain makes the kernel track every packet of the host's
    namespace: the batch has neither unless a network has egress here."""
    gw = Gateway(7, "10.7.0.0/24", "10.7.0.1", 24)
    plain = json.dumps(render_sync(make_spec({7: ["192.0.2.1"]}, [G1])))
    assert '"ct"' not in plain and '"masquerade"' not in plain
    egress = render_sync(make_spec({7: ["192.0.2.1"]}, [G1], (gw,)))["nftables"]
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

"""Model and codec: validation on construction, round trips, bad values rejected clearly."""

from __future__ import annotations

import pytest

from controller.model import codec
from controller.model.errors import InvalidRecord
from controller.model.naming import (
    IFNAME_MAX,
    bridge_name,
    derive_mac,
    veth_host_name,
    veth_peer_name,
    vxlan_name,
)
from controller.model.records import Endpoint, Host, Network


def test_network_round_trip() -> None:
    n = Network("blue", 100, "10.1.0.0/24", "10.1.0.1", 1400)
    assert codec.decode_network(codec.encode_network(n)) == n
    bare = codec.decode_network('{"name":"x","vni":7,"subnet":"10.0.0.0/30"}')
    assert bare.gateway is None and bare.mtu is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "Blue"}, "name"),
        ({"name": "-x"}, "name"),
        ({"name": "a" * 64}, "name"),
        ({"vni": 0}, "vni"),
        ({"vni": 16_777_216}, "vni"),
        ({"subnet": "10.1.0.0/31"}, "/30"),
        ({"subnet": "10.1.0.1/24"}, "subnet"),
        ({"subnet": "nonsense"}, "subnet"),
        ({"subnet": "10.1.0.0"}, "prefix"),
        ({"gateway": "10.2.0.1"}, "gateway"),
        ({"gateway": "10.1.0.0"}, "gateway"),
        ({"mtu": 100}, "mtu"),
    ],
)
def test_network_rejects(kwargs: dict[str, object], needle: str) -> None:
    base: dict[str, object] = {"name": "blue", "vni": 100, "subnet": "10.1.0.0/24"}
    base.update(kwargs)
    with pytest.raises(InvalidRecord, match=needle):
        Network(**base)  # type: ignore[arg-type]


def test_endpoint_and_host_round_trip() -> None:
    e = Endpoint("ab12", "blue", "h1", "10.1.0.2", "02:64:0a:01:00:02", "c1", "eth0")
    assert codec.decode_endpoint(codec.encode_endpoint(e)) == e
    h = Host("h1", "172.31.253.1", 1500, "kernel", "0.1.0")
    assert codec.decode_host(codec.encode_host(h)) == h


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1,2]",
        b'{"id":"a","network":"blue","host":"h1","ip":"10.1.0.300","mac":"02:00:00:00:00:01"}',
        b'{"id":"a","network":"blue","host":"h1","ip":"10.1.0.3","mac":"03:00:00:00:00:01"}',
        b'{"id":"a","network":"blue","host":"h1","ip":"10.1.0.3"}',
        b'{"id":"a","network":"blue","host":"h1","ip":"10.1.0.3","mac":"02:00:00:00:00:01",'
        b'"extra":1}',
        b"\xff\xfe",
    ],
)
def test_decode_endpoint_rejects_bad_values(raw: bytes) -> None:
    with pytest.raises(InvalidRecord):
        codec.decode_endpoint(raw)


def test_interface_names_fit_and_are_stable() -> None:
    for name in (
        bridge_name(16_777_215),
        vxlan_name(16_777_215),
        veth_host_name("n" * 63, "e"),
        veth_peer_name("n", "e" * 63),
    ):
        assert len(name) <= IFNAME_MAX and name.startswith("hd")
    assert veth_host_name("a", "b") == veth_host_name("a", "b") != veth_host_name("a", "c")


def test_mac_is_local_unicast_and_unique_per_address() -> None:
    a, b = derive_mac(100, "10.1.0.2"), derive_mac(100, "10.1.0.3")
    assert a != b and a == "02:64:0a:01:00:02"
    assert int(a[:2], 16) & 0b10 and not int(a[:2], 16) & 1

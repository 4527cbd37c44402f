"""DesiredState on the in-memory store: atomic writes, uniqueness, clear refusals.

The same behaviour against a real etcd is covered by tests/integration/test_cli.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from controller.desired import DesiredState
from controller.ipam import pool_size, usable_addresses
from controller.model import codec
from controller.model.errors import Conflict, Exhausted, InvalidRecord, NotFound
from controller.model.records import Endpoint, Host, Network
from controller.store import keys
from controller.store.kv import MAX_READS, Listing, Read
from controller.store.memory import MemoryKV


@pytest.fixture
def kv() -> MemoryKV:
    kv = MemoryKV()
    for h in ("h1", "h2"):
        kv.put_raw(keys.host(h), codec.encode_host(Host(h, f"172.31.253.{h[1]}")))
    return kv


def dump(kv: MemoryKV) -> dict[str, bytes]:
    return {i.key: i.value for i in kv.list(keys.ROOT).items}


def test_create_network_picks_lowest_free_vni(kv: MemoryKV) -> None:
    ds = DesiredState(kv)
    assert ds.create_network("a", "10.1.0.0/24", vni=1).vni == 1
    assert ds.create_network("b", "10.1.0.0/24").vni == 2
    assert codec.decode_owner(kv.get(keys.vni(2)).value) == "b"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "exc", "needle"),
    [
        (("Bad_Name", "10.0.0.0/24"), InvalidRecord, "name"),
        (("n", "10.0.0.0/33"), InvalidRecord, "CIDR"),
        (("n", "10.0.0.0/31"), InvalidRecord, "/30"),
        (("n", "0.0.0.0/0"), InvalidRecord, "at least /8"),
        (("n", "127.1.0.0/16"), InvalidRecord, "loopback"),
        (("n", "10.0.0.0/24", None, "10.9.0.1"), InvalidRecord, "gateway"),
        (("n", "10.0.0.0/24", 0), InvalidRecord, "vni"),
        (("n", "10.0.0.0/24", 16_777_216), InvalidRecord, "vni"),
        (("taken", "10.0.0.0/24"), Conflict, "already exists"),
        (("n", "10.0.0.0/24", 5), Conflict, "VNI 5"),
    ],
)
def test_network_refusals_write_nothing(
    kv: MemoryKV, args: tuple[object, ...], exc: type[Exception], needle: str
) -> None:
    ds = DesiredState(kv)
    ds.create_network("taken", "10.9.0.0/24", vni=5)
    before = dump(kv)
    with pytest.raises(exc, match=needle):
        ds.create_network(*args)  # type: ignore[arg-type]
    assert dump(kv) == before


def test_endpoint_allocation_skips_gateway_and_is_atomic(kv: MemoryKV) -> None:
    ds = DesiredState(kv)
    ds.create_network("blue", "10.1.0.0/29", gateway="10.1.0.1")
    got = [ds.create_endpoint("blue", "h1").ip for _ in range(5)]
    assert got == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    before = dump(kv)
    with pytest.raises(Exhausted, match="no free address"):
        ds.create_endpoint("blue", "h1")
    assert dump(kv) == before
    # every endpoint has exactly its IPAM key
    eps = ds.endpoints("blue")
    owners = {
        i.key.rsplit("/", 1)[1]: codec.decode_owner(i.value)
        for i in kv.list(keys.ipam_of("blue")).items
    }
    assert owners == {e.ip: e.id for e in eps}
    assert len({e.mac for e in eps}) == 5


def test_removed_address_is_reused(kv: MemoryKV) -> None:
    ds = DesiredState(kv)
    ds.create_network("blue", "10.1.0.0/24")
    a = ds.create_endpoint("blue", "h1")
    ds.create_endpoint("blue", "h2")
    ds.remove_endpoint("blue", a.id)
    assert kv.get(keys.ipam("blue", a.ip)) is None
    assert ds.create_endpoint("blue", "h2").ip == a.ip


@pytest.mark.parametrize(
    ("kwargs", "exc", "needle"),
    [
        ({"ip": "10.2.0.5"}, InvalidRecord, "outside"),
        ({"ip": "10.1.0.0"}, InvalidRecord, "network or broadcast"),
        ({"ip": "10.1.0.1"}, InvalidRecord, "gateway"),
        ({"ip": "10.1.0.9"}, Conflict, "already in use"),
        ({"ip": "banana"}, InvalidRecord, "not a valid"),
        ({"host": "nohost"}, NotFound, "not registered"),
        ({"host": "BAD"}, InvalidRecord, "host"),
        ({"netns": "bad name!"}, InvalidRecord, "netns"),
        ({"ifname": "x" * 16}, InvalidRecord, "ifname"),
        ({"network": "nonet"}, NotFound, "does not exist"),
        ({"endpoint_id": "fixed"}, Conflict, "already exists"),
        ({"netns": "c9"}, Conflict, "already endpoint blue/fixed"),
    ],
)
def test_endpoint_refusals_write_nothing(
    kv: MemoryKV, kwargs: dict[str, object], exc: type[Exception], needle: str
) -> None:
    ds = DesiredState(kv)
    ds.create_network("blue", "10.1.0.0/24", gateway="10.1.0.1")
    ds.create_endpoint("blue", "h1", ip="10.1.0.9", endpoint_id="fixed", netns="c9")
    before = dump(kv)
    args: dict[str, object] = {"network": "blue", "host": "h1"}
    args.update(kwargs)
    with pytest.raises(exc, match=needle):
        ds.create_endpoint(**args)  # type: ignore[arg-type]
    assert dump(kv) == before


@pytest.mark.parametrize("indexed", [True, False], ids=["placement-index", "no-layout-record"])
def test_interface_check_reads_the_hosts_endpoints(kv: MemoryKV, indexed: bool) -> None:
    """One interface of a host, one endpoint: refused in any network, among more endpoints
    on the host than one read takes; the same interface on another host is not refused. With
    the index, a record a rule-breaking client wrote without its placement key is not seen
    (its agent reports the clash); without it, every record is read."""
    if indexed:
        kv.put_raw(keys.LAYOUT, codec.encode_layout(True))
    ds = DesiredState(kv)
    ds.create_network("blue", "10.1.0.0/16")
    ds.create_network("green", "10.2.0.0/24")
    for i in range(MAX_READS + 2):
        ds.create_endpoint("blue", "h1", netns=f"c{i}")
    ds.create_endpoint("green", "h2", netns="x")
    before = dump(kv)
    for network in ("blue", "green"):
        with pytest.raises(Conflict, match=f"namespace c{MAX_READS + 1} on h1 is already"):
            ds.create_endpoint(network, "h1", netns=f"c{MAX_READS + 1}")
    assert dump(kv) == before
    ds.create_endpoint("blue", "h1", netns="x")
    stray = codec.encode_endpoint(
        Endpoint("stray", "green", "h2", "10.2.0.77", "02:00:00:00:00:77", netns="y")
    )
    kv.put_raw(keys.endpoint("green", "stray"), stray)
    if indexed:
        assert ds.create_endpoint("blue", "h2", netns="y").netns == "y"
    else:
        with pytest.raises(Conflict, match="already endpoint green/stray"):
            ds.create_endpoint("blue", "h2", netns="y")


class CountingKV(MemoryKV):
    """``MemoryKV`` that counts the endpoint records read through ``read``."""

    def __init__(self) -> None:
        super().__init__()
        self.records_read = 0

    def read(self, reads: Sequence[Read]) -> tuple[Listing, ...]:
        self.records_read += sum(r.key.startswith(keys.ENDPOINTS) for r in reads)
        return super().read(reads)


def test_placement_values_spare_reading_the_records() -> None:
    """Placement keys that name another interface cost no record read; one that names this
    interface, or says nothing (an older writer's), has its record read, and only a record
    that really takes the interface refuses the create."""
    kv = CountingKV()
    kv.put_raw(keys.host("h1"), codec.encode_host(Host("h1", "172.31.253.1")))
    kv.put_raw(keys.LAYOUT, codec.encode_layout(True))
    ds = DesiredState(kv)
    ds.create_network("blue", "10.1.0.0/24")
    for i in range(5):
        ds.create_endpoint("blue", "h1", netns=f"c{i}", endpoint_id=f"e{i}")
    ds.create_endpoint("blue", "h1")  # Docker's: no namespace
    kv.records_read = 0
    ds.create_endpoint("blue", "h1", netns="new")
    assert kv.records_read == 0
    with pytest.raises(Conflict, match="namespace c3 on h1"):
        ds.create_endpoint("blue", "h1", netns="c3")
    assert kv.records_read == 1
    old = ds.create_endpoint("blue", "h1", netns="old", endpoint_id="old")
    kv.put_raw(keys.placement("h1", "blue", old.id), b"")  # as a release before this one
    liar = keys.placement("h1", "blue", "e0")
    kv.put_raw(liar, codec.encode_placement(replace(old, netns="free")))  # a wrong value
    kv.records_read = 0
    with pytest.raises(Conflict, match="namespace old on h1"):
        ds.create_endpoint("blue", "h1", netns="old")
    assert ds.create_endpoint("blue", "h1", netns="free").netns == "free"
    assert kv.records_read == 3  # the older writer's key in both, the one naming "free"


def test_network_rm_refuses_with_endpoints_and_force_releases(kv: MemoryKV) -> None:
    ds = DesiredState(kv)
    ds.create_network("blue", "10.1.0.0/24", vni=10)
    ds.create_network("green", "10.1.0.0/24", vni=11)
    ds.create_endpoint("blue", "h1")
    ds.create_endpoint("green", "h1")
    before = dump(kv)
    with pytest.raises(Conflict, match="--force"):
        ds.remove_network("blue")
    assert dump(kv) == before
    assert ds.remove_network("blue", force=True) == 1
    left = dump(kv)
    assert not [k for k in left if "/blue" in k or k == keys.vni(10)]
    assert len(ds.endpoints("green")) == 1 and keys.vni(11) in left


def test_endpoint_for_removed_network_is_refused(kv: MemoryKV) -> None:
    """The endpoint txn is guarded by the network's mod_revision."""
    ds = DesiredState(kv)
    ds.create_network("blue", "10.1.0.0/24")
    stored_rev = kv.get(keys.network("blue")).mod_revision  # type: ignore[union-attr]
    ds.remove_network("blue")
    ds.create_network("blue", "10.7.0.0/24")
    assert kv.get(keys.network("blue")).mod_revision != stored_rev  # type: ignore[union-attr]
    ep = ds.create_endpoint("blue", "h1")
    assert ep.ip.startswith("10.7.")


def test_pool_arithmetic() -> None:
    n = Network("n", 1, "10.0.0.0/28", "10.0.0.1")
    assert pool_size(n) == 13 == len(list(usable_addresses(n)))
    assert pool_size(Network("n", 1, "10.0.0.0/30")) == 2

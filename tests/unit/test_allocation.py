"""The one allocation path (``controller/allocation.py``) on ``MemoryKV``: lowest free first,
the claim's own puts in the same transaction, a lost race retried, a failure that is not an
address race stopped by ``on_lost``, a full pool ``Exhausted``."""

from __future__ import annotations

import pytest

from controller import allocation
from controller.desired import DesiredState
from controller.model import codec
from controller.model.errors import Conflict, Exhausted
from controller.model.records import Host, Network
from controller.store import keys
from controller.store.kv import Delete, Listing, Put, Txn
from controller.store.memory import MemoryKV


def _net(kv: MemoryKV, subnet: str = "10.9.0.0/29") -> tuple[Network, int]:
    net = DesiredState(kv).create_network("n", subnet)
    got = kv.get(keys.network("n"))
    assert got is not None
    return net, got.mod_revision


def test_lowest_free_first_with_the_claims_own_puts() -> None:
    kv = MemoryKV()
    net, rev = _net(kv)
    claim = allocation.Claim("x", puts=lambda ips: (Put(f"/t/{ips[0]}", b"1"),))

    def never(ips: allocation.Addresses) -> None:
        pytest.fail(f"no race expected ({ips})")

    assert allocation.allocate(kv, net, rev, claim, never) == ("10.9.0.1",)
    assert allocation.allocate(kv, net, rev, claim, never) == ("10.9.0.2",)
    got = kv.get(keys.ipam("n", "10.9.0.1"))
    assert got is not None and codec.decode_owner(got.value) == "x"
    assert kv.get("/t/10.9.0.2") is not None  # written in the claiming transaction


def test_a_taken_address_is_skipped_and_a_full_pool_is_exhausted() -> None:
    kv = MemoryKV()
    net, rev = _net(kv)  # /29: .1 .. .6 usable
    kv.commit(Txn(success=(Put(keys.ipam("n", "10.9.0.1"), b'"other"'),)))
    got = [
        allocation.allocate(kv, net, rev, allocation.Claim("x"), lambda ip: None) for _ in range(5)
    ]
    assert sorted(got) == [(f"10.9.0.{i}",) for i in range(2, 7)]
    with pytest.raises(Exhausted, match="no free address"):
        allocation.allocate(kv, net, rev, allocation.Claim("x"), lambda ip: None)


def test_on_lost_stops_a_claim_that_can_never_succeed() -> None:
    kv = MemoryKV()
    net, rev = _net(kv)
    calls: list[allocation.Addresses] = []

    def on_lost(ips: allocation.Addresses) -> None:
        calls.append(ips)
        raise Conflict("the network changed")

    with pytest.raises(Conflict):
        allocation.allocate(kv, net, rev + 1, allocation.Claim("x"), on_lost)
    assert len(calls) == 1  # asked after the CHECK_EVERY-th lost race


class CountingKV(MemoryKV):
    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    def list(self, prefix: str, revision: int | None = None) -> Listing:
        self.lists += 1
        return super().list(prefix, revision)


def test_a_kept_pool_costs_one_transaction_per_allocation() -> None:
    kv = CountingKV()
    net, rev = _net(kv, "10.9.0.0/24")
    kv.lists = 0
    pools = allocation.Pools()
    got = [
        allocation.allocate(kv, net, rev, allocation.Claim("x"), _no_race, pools) for _ in range(20)
    ]
    assert got == [(f"10.9.0.{i}",) for i in range(1, 21)]
    assert kv.lists == 1  # listed once, then kept by its own claims


def test_addresses_freed_elsewhere_are_found_before_the_pool_counts_as_full() -> None:
    kv = MemoryKV()
    net, rev = _net(kv)  # 6 usable
    pools = allocation.Pools()
    for _ in range(6):
        allocation.allocate(kv, net, rev, allocation.Claim("x"), _no_race, pools)
    kv.commit(Txn(success=(Delete(keys.ipam("n", "10.9.0.4")),)))  # another writer frees .4
    got = allocation.allocate(kv, net, rev, allocation.Claim("x"), _no_race, pools)
    assert got == ("10.9.0.4",)
    with pytest.raises(Exhausted):
        allocation.allocate(kv, net, rev, allocation.Claim("x"), _no_race, pools)


def test_a_stale_pool_loses_a_race_and_moves_on() -> None:
    kv = MemoryKV()
    net, rev = _net(kv)
    pools = allocation.Pools()
    allocation.allocate(kv, net, rev, allocation.Claim("x"), _no_race, pools)  # .1, pool kept
    kv.commit(Txn(success=(Put(keys.ipam("n", "10.9.0.2"), b'"other"'),)))  # unknown to it
    lost: list[allocation.Addresses] = []
    got = allocation.allocate(kv, net, rev, allocation.Claim("x"), lost.append, pools)
    assert lost == [] and got != ("10.9.0.2",)  # one lost race: no check yet


def test_a_release_through_the_same_allocator_is_reused_first() -> None:
    kv = MemoryKV()
    ds = DesiredState(kv)
    kv.commit(
        Txn(success=(Put(keys.host("h1"), codec.encode_host(Host("h1", "192.0.2.1")).encode()),))
    )
    ds.create_network("n", "10.9.0.0/24")
    a, b = ds.create_endpoint("n", "h1"), ds.create_endpoint("n", "h1")
    assert (a.ip, b.ip) == ("10.9.0.1", "10.9.0.2")
    ds.remove_endpoint("n", a.id)
    assert ds.create_endpoint("n", "h1").ip == "10.9.0.1"


def _no_race(ips: allocation.Addresses) -> None:
    pytest.fail(f"no race expected ({ips})")

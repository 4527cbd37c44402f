"""Cluster-wide IPAM against a real etcd: concurrent allocators never hand out an address twice,
and a small pool yields exactly its usable addresses, then a clear error."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from controller.desired import DesiredState
from controller.model import codec
from controller.model.errors import Exhausted
from controller.model.records import Host
from controller.store import keys
from controller.store.kv import KV, Put, Txn

WORKERS, PER_WORKER = 8, 250


def _allocate(url: str, n: int, host: str) -> list[str]:
    from controller.store.etcd import EtcdKV  # a client per process, created after the fork

    kv = EtcdKV([url])
    try:
        ds = DesiredState(kv)
        return [ds.create_endpoint("big", host).ip for _ in range(n)]
    finally:
        kv.close()


def _register(kv: KV, name: str) -> None:
    kv.commit(
        Txn(success=(Put(keys.host(name), codec.encode_host(Host(name, "172.31.253.1")).encode()),))
    )


def test_eight_processes_allocate_distinct_addresses(etcd_server: object, etcd_kv: KV) -> None:
    url: str = etcd_server.url  # type: ignore[attr-defined]
    _register(etcd_kv, "h1")
    DesiredState(etcd_kv).create_network("big", "10.20.0.0/20")
    ctx = mp.get_context("spawn")
    with ctx.Pool(WORKERS) as pool:
        results = pool.starmap(_allocate, [(url, PER_WORKER, "h1")] * WORKERS)
    ips = [ip for chunk in results for ip in chunk]
    assert len(ips) == WORKERS * PER_WORKER == len(set(ips))
    # the store is consistent: one IPAM key per endpoint, owned by it, and nothing else
    eps = DesiredState(etcd_kv).endpoints("big")
    owners = {
        i.key.rsplit("/", 1)[1]: codec.decode_owner(i.value)
        for i in etcd_kv.list(keys.ipam_of("big")).items
    }
    assert owners == {e.ip: e.id for e in eps}
    assert sorted(owners) == sorted(ips)


def test_small_pool_yields_exactly_its_addresses(etcd_kv: KV) -> None:
    _register(etcd_kv, "h1")
    ds = DesiredState(etcd_kv)
    ds.create_network("small", "10.30.0.0/28", gateway="10.30.0.1")
    got = [ds.create_endpoint("small", "h1").ip for _ in range(13)]
    assert got == [f"10.30.0.{i}" for i in range(2, 15)]
    with pytest.raises(Exhausted, match="no free address"):
        ds.create_endpoint("small", "h1")

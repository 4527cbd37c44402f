"""Membership against a real etcd: host record + leased alive key, clean stop, lost lease."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from controller.lab.etcd_server import EtcdServer
from controller.membership import Membership
from controller.model import codec
from controller.model.errors import StoreUnavailable
from controller.model.records import Host
from controller.store import keys
from controller.store.etcd import EtcdKV
from controller.store.kv import Delete, Put, Txn

HOST = Host("node-1", "192.0.2.10", 1500, "kernel", "test")


def wait_for(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        time.sleep(0.05)


def test_register_and_stop(etcd_kv: EtcdKV) -> None:
    m = Membership(EtcdKV(etcd_kv.urls), HOST, ttl=5)
    try:
        assert m.start() and m.alive
        host = etcd_kv.get(keys.host(HOST.name))
        alive = etcd_kv.get(keys.alive(HOST.name))
        assert host is not None and codec.decode_host(host.value) == HOST and host.lease == 0
        assert alive is not None and alive.lease != 0 and alive.lease == m.lease
        assert codec.decode_alive(alive.value).pid > 0
        assert 0 < etcd_kv.refresh_lease(alive.lease) <= 5
    finally:
        m.stop()
    assert etcd_kv.get(keys.alive(HOST.name)) is None  # at once, not after the TTL
    assert etcd_kv.get(keys.host(HOST.name)) is not None
    assert not m.alive


def test_lost_lease_is_replaced(etcd_kv: EtcdKV) -> None:
    m = Membership(EtcdKV(etcd_kv.urls), HOST, ttl=3)
    try:
        assert m.start()
        first = m.lease
        assert first is not None
        etcd_kv.revoke_lease(first)  # behind Membership's back
        assert etcd_kv.get(keys.alive(HOST.name)) is None
        wait_for(lambda: etcd_kv.get(keys.alive(HOST.name)) is not None, 4)
        alive = etcd_kv.get(keys.alive(HOST.name))
        assert alive is not None and alive.lease not in (0, first) and m.alive
        assert m.registrations == 2
    finally:
        m.stop()


def test_survives_an_etcd_outage(etcd_server: EtcdServer, etcd_kv: EtcdKV) -> None:
    m = Membership(EtcdKV([etcd_server.url], timeout=1.0), HOST, ttl=3)
    try:
        assert m.start()
        etcd_server.kill()
        wait_for(lambda: not m.alive, 4)
        assert m.last_error is not None
        time.sleep(3.5)  # longer than the TTL (etcd restores leases on restart, then expiry runs)
        etcd_server.start()
        wait_for(lambda: m.alive, 8)
        wait_for(lambda: etcd_kv.get(keys.alive(HOST.name)) is not None, 8)
        alive = etcd_kv.get(keys.alive(HOST.name))
        assert alive is not None and alive.lease == m.lease
    finally:
        m.stop()


def test_a_long_outage_costs_no_extra_wait_once_etcd_is_back(etcd_server: EtcdServer) -> None:
    """gRPC backs off its reconnects on its own (1 s, x1.6, up to 120 s) under every retry of
    ours: with its defaults a client that kept calling through a 30 s outage reached etcd
    again 8-16 s after etcd was restarted (three runs; 49 s after a 150 s outage), and an
    agent stayed cut off as long (``bench/bench_etcd_outage.py``). ``GRPC_OPTIONS`` caps it
    at 2 s."""
    kv = EtcdKV([etcd_server.url], timeout=1.0)
    try:
        kv.get("/probe")
        etcd_server.kill()
        until = time.monotonic() + 30
        while time.monotonic() < until:  # as the membership and status threads do
            with contextlib.suppress(StoreUnavailable):
                kv.get("/probe")
            time.sleep(0.5)
        etcd_server.start()  # returns once etcd answers a fresh client
        back = time.monotonic()
        while True:
            try:
                kv.get("/probe")
                break
            except StoreUnavailable:
                assert time.monotonic() - back < 5, "still cut off 5 s after etcd came back"
                time.sleep(0.1)
    finally:
        kv.close()


def test_host_record_changed_by_someone_else_is_put_back(etcd_kv: EtcdKV) -> None:
    m = Membership(EtcdKV(etcd_kv.urls), HOST, ttl=3)
    try:
        assert m.start()
        assert m.notices() == ()
        forged = codec.encode_host(Host(HOST.name, "192.0.2.99")).encode()
        etcd_kv.commit(Txn(success=(Put(keys.host(HOST.name), forged),)))

        def restored() -> bool:
            got = etcd_kv.get(keys.host(HOST.name))
            return got is not None and codec.decode_host(got.value) == HOST

        # within one refresh (ttl/3); the count and the notice follow the put: wait for all
        wait_for(lambda: restored() and "192.0.2.99" in "".join(m.notices()), 3)
        assert m.restored == 1
        (notice,) = m.notices()
        assert "restored 1 time" in notice and "192.0.2.99" in notice
        etcd_kv.commit(Txn(success=(Delete(keys.host(HOST.name)),)))  # deleted: put back too
        wait_for(lambda: restored() and "deleted" in "".join(m.notices()), 3)
        assert m.restored == 2
    finally:
        m.stop()

"""The desired state the data-plane benches scale on, and a timer. Shared by
``bench_kernel.py`` and ``bench_ovs.py`` so both backends are measured on the same picture:
one local endpoint and ``remotes`` remote endpoints spread over ``vteps`` other hosts."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import TypeVar

from controller.model.records import Backend, Endpoint, Host, Network
from controller.model.view import Snapshot

T = TypeVar("T")

NET = Network("bench", 0xBE, "10.200.0.0/16")


def local_host(backend: Backend) -> Host:
    return Host("h0", "198.51.100.1", backend=backend)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and how long it took, in seconds."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def build_snapshot(remotes: int, vteps: int, ep_ns: str, backend: Backend) -> Snapshot:
    """``remotes`` endpoints on ``vteps`` remote hosts plus one local endpoint in ``ep_ns``."""
    local_h = local_host(backend)
    hosts = {local_h.name: local_h}
    for i in range(vteps):
        h = Host(f"r{i}", f"198.51.{101 + i // 250}.{1 + i % 250}", backend=backend)
        hosts[h.name] = h
    base = int(ipaddress.IPv4Address("10.200.1.0"))
    eps: dict[tuple[str, str], Endpoint] = {}
    local = Endpoint("local", NET.name, local_h.name, "10.200.0.10", "02:be:0a:c8:00:0a", ep_ns)
    eps[NET.name, local.id] = local
    for i in range(remotes):
        ip = ipaddress.IPv4Address(base + i)
        p = ip.packed
        mac = f"02:be:{p[0]:02x}:{p[1]:02x}:{p[2]:02x}:{p[3]:02x}"
        e = Endpoint(f"e{i}", NET.name, f"r{i % vteps}", str(ip), mac)
        eps[NET.name, e.id] = e
    return Snapshot(revision=1, networks={NET.name: NET}, endpoints=eps, hosts=hosts)

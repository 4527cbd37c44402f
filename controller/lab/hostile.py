"""Hostile values for the public schema: what a careless or hostile etcd client may write.

Used by the chaos e2e test (tests/e2e/test_hostile.py) and the benchmark
(bench/bench_hostile.py) to prove that no value in etcd stops an agent or breaks isolation.
``hostile_puts`` is pure given its random generator; every key it returns has an id or name
starting with ``HOSTILE_TAG``, so ``hostile_keys`` finds them all again for cleanup.

The kinds, each aimed at one way the cluster could break:

* ``deep``: 5,000 nested lists (once stopped every watcher: ``RecursionError``);
* ``huge``: a network whose name is 200 KB (once copied into every status, every pass);
* ``types``: valid JSON with wrong types, NaN, ``1e400``, unknown fields;
* ``dup-ip`` / ``dup-mac``: a valid endpoint with a live endpoint's address or MAC (once
  replaced the neighbour entry on every host: a hijack);
* ``dup-vni``: a valid network with a live network's VNI plus an endpoint in it (once merged
  the two networks' segments);
* ``dup-ifname``: a valid endpoint with a live endpoint's namespace and interface name;
* ``bad-vtep``: a host whose VTEP is loopback, multicast, broadcast or unspecified, with an
  endpoint in a live network (once turned overlay broadcasts into underlay multicast).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from controller.model import codec
from controller.model.records import Endpoint, Network
from controller.store import keys

HOSTILE_TAG = "zz-hostile"
KINDS = ("deep", "huge", "types", "dup-ip", "dup-mac", "dup-vni", "dup-ifname", "bad-vtep")
BAD_VTEPS = ("127.0.0.1", "224.0.0.1", "255.255.255.255", "0.0.0.0")


@dataclass(frozen=True, slots=True)
class HostilePut:
    """One hostile write: the key, the raw value, and which kind of attack it is."""

    key: str
    value: bytes
    kind: str


def _mac(rng: random.Random, vni: int) -> str:
    tail = ":".join(f"{rng.randrange(256):02x}" for _ in range(4))
    return f"02:{vni & 0xFF:02x}:{tail}"


def hostile_puts(
    rng: random.Random,
    n: int,
    networks: Sequence[Network],
    endpoints: Sequence[Endpoint],
    hosts: Sequence[str],
    start: int = 0,
) -> list[HostilePut]:
    """``n`` hostile writes aimed at the live ``networks``/``endpoints`` on ``hosts``. Pure
    given ``rng``; the kinds cycle so every kind appears once ``n >= len(KINDS)``. Keys are
    numbered from ``start`` (a caller writing in rounds passes distinct ranges)."""
    out: list[HostilePut] = []
    for i in range(start, start + n):
        kind = KINDS[i % len(KINDS)]
        tag = f"{HOSTILE_TAG}-{kind}-{i}"
        victim = rng.choice(endpoints) if endpoints else None
        if kind == "deep":
            out.append(HostilePut(keys.network(tag), b"[" * 5000 + b"]" * 5000, kind))
        elif kind == "huge":
            value = {"name": "x" * 200_000, "vni": 7, "subnet": "10.99.0.0/24"}
            out.append(HostilePut(keys.network(tag), json.dumps(value).encode(), kind))
        elif kind == "types":
            value = rng.choice([
                {"id": tag, "network": 5, "host": [], "ip": None, "mac": {}},
                {"name": tag, "vni": float("nan"), "subnet": "10.0.0.0/24"},
                {"name": tag, "vni": 1e400, "subnet": True},
                {"name": tag, "vni": 9, "subnet": "10.0.0.0/24", "evil": "field"},
            ])  # fmt: skip
            followed = networks[0].name if networks else "x"  # a network the agents follow
            where = keys.endpoint(followed, tag) if "id" in value else keys.network(tag)
            out.append(HostilePut(where, json.dumps(value).encode(), kind))
        elif kind in ("dup-ip", "dup-mac", "dup-ifname") and victim is not None:
            net = next(x for x in networks if x.name == victim.network)
            other = [h for h in hosts if h != victim.host] or list(hosts)
            ep = Endpoint(
                tag,
                victim.network,
                victim.host if kind == "dup-ifname" else rng.choice(other),
                victim.ip if kind == "dup-ip" else _free_ip(rng, net, endpoints),
                victim.mac if kind == "dup-mac" else _mac(rng, net.vni),
                victim.netns if kind == "dup-ifname" else None,
                victim.ifname,
            )
            out.append(HostilePut(keys.endpoint(ep.network, ep.id),
                                  codec.encode_endpoint(ep).encode(), kind))  # fmt: skip
        elif kind == "dup-vni" and networks:
            live = rng.choice(networks)
            net = Network(tag, live.vni, "10.98.0.0/24")
            ep = Endpoint(tag, tag, rng.choice(hosts), "10.98.0.5", _mac(rng, live.vni))
            out.append(HostilePut(keys.network(tag), codec.encode_network(net).encode(), kind))
            out.append(HostilePut(keys.endpoint(tag, tag), codec.encode_endpoint(ep).encode(),
                                  kind))  # fmt: skip
        elif kind == "bad-vtep" and networks:
            host = {"name": tag, "vtep": rng.choice(BAD_VTEPS), "underlay_mtu": 1500,
                    "backend": "kernel", "version": ""}  # fmt: skip
            net = rng.choice(networks)
            ep = Endpoint(tag, net.name, tag, _free_ip(rng, net, endpoints), _mac(rng, net.vni))
            out.append(HostilePut(keys.host(tag), json.dumps(host).encode(), kind))
            out.append(HostilePut(keys.endpoint(ep.network, ep.id),
                                  codec.encode_endpoint(ep).encode(), kind))  # fmt: skip
    return out


def _free_ip(rng: random.Random, net: Network, endpoints: Iterable[Endpoint]) -> str:
    """An address of ``net`` that no live endpoint has (hostile records must not collide by
    accident: only the ``dup-*`` kinds collide, on purpose)."""
    taken = {e.ip for e in endpoints if e.network == net.name}
    assert net.network is not None, "hostile records target IPv4 networks"
    hosts_ = list(net.network.hosts())
    for _ in range(1000):
        ip = str(hosts_[rng.randrange(len(hosts_) // 2, len(hosts_))])
        if ip not in taken:
            return ip
    raise ValueError(f"no free address left in {net.subnet}")


def hostile_keys(all_keys: Iterable[str]) -> list[str]:
    """The keys ``hostile_puts`` may have written, among ``all_keys`` (for cleanup)."""
    return [k for k in all_keys if HOSTILE_TAG in k]

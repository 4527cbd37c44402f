"""Address and VNI selection: the pure core of cluster-wide allocation.

The transactions that make a choice stick live in ``controller.desired``; this module only
answers "which candidates, in which order" so it can be tested exhaustively without a store.
Uniqueness itself is never decided here: etcd's ``create_revision == 0`` guard decides it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterator

from controller.model.errors import brief
from controller.model.records import VNI_MAX, VNI_MIN, Network

#: The IPv6 addresses an allocator hands out: the first 2^32 of a subnet (more than any
#: network holds endpoints), so the low 32 bits of an allocated address are unique in it (an
#: IPv6-only endpoint's MAC derives from them: ``controller/model/naming.py``).
V6_POOL = 1 << 32


def families(net: Network) -> tuple[bool, ...]:
    """The families ``net`` has, IPv4 first, as "is IPv6" flags. Pure."""
    return tuple(six for six, s in ((False, net.subnet), (True, net.subnet6)) if s is not None)


def span(net: Network, six: bool) -> tuple[int, int, int | None]:
    """(lowest, highest usable address, the gateway or None) of one family of ``net``, as
    integers: IPv4 without the network and broadcast addresses, IPv6 without the
    subnet-router anycast address (the first) and within ``V6_POOL``. Pure."""
    if six:
        assert net.network6 is not None
        lo = int(net.network6.network_address) + 1
        hi = min(int(net.network6.broadcast_address), lo + V6_POOL - 1)
        gw = net.gateway6
    else:
        assert net.network is not None
        lo = int(net.network.network_address) + 1
        hi = int(net.network.broadcast_address) - 1
        gw = net.gateway
    return lo, hi, int(ipaddress.ip_address(gw)) if gw is not None else None


def text(value: int, six: bool) -> str:
    """The canonical text of an address given as an integer. Pure."""
    return str(ipaddress.IPv6Address(value) if six else ipaddress.IPv4Address(value))


def usable_addresses(net: Network, six: bool = False) -> Iterator[str]:
    """Host addresses of one family of ``net`` in ascending order, without the gateway."""
    lo, hi, gw = span(net, six)
    return (text(v, six) for v in range(lo, hi + 1) if v != gw)


def pool_size(net: Network) -> int:
    """How many endpoints ``net`` can give addresses to (the smallest family decides)."""
    sizes = []
    for six in families(net):
        lo, hi, gw = span(net, six)
        sizes.append(max(hi - lo + 1, 0) - (1 if gw is not None else 0))
    return min(sizes)


def free_addresses(net: Network, taken: Collection[str], six: bool = False) -> Iterator[str]:
    """Usable addresses of one family not in ``taken``, lowest first (lazy: cheap even for
    a /8)."""
    return (a for a in usable_addresses(net, six) if a not in taken)


def check_requested(net: Network, ip: str) -> str | None:
    """Why ``ip`` cannot be an endpoint address of ``net``, or None if it can. Pure."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return f"{brief(ip)} is not a valid IP address"
    six = addr.version == 6
    subnet = net.network6 if six else net.network
    if subnet is None:
        return f"{ip} is an IPv{addr.version} address and network {net.name} has no such subnet"
    if str(addr) != ip:
        return f"{brief(ip)} must be written canonically, as {addr}"
    lo, hi, gw = span(net, six)
    if addr not in subnet:
        return f"{ip} is outside subnet {subnet} of network {net.name}"
    if not lo <= int(addr) <= hi:
        if int(addr) < lo or not six:
            return f"{ip} is the network or broadcast address of {subnet}"
        return f"{ip} is beyond the first {V6_POOL} addresses of {subnet}, which heddle hands out"
    if gw is not None and int(addr) == gw:
        return f"{ip} is the gateway of network {net.name}"
    return None


def free_vnis(taken: Collection[int], start: int = VNI_MIN) -> Iterator[int]:
    """VNIs not in ``taken``, ascending from ``start``."""
    return (v for v in range(start, VNI_MAX + 1) if v not in taken)

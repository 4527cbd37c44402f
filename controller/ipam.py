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


def usable_addresses(net: Network) -> Iterator[str]:
    """Host addresses of ``net`` in ascending order, without network, broadcast and gateway."""
    subnet = net.network
    gateway = net.gateway
    for addr in subnet.hosts():
        text = str(addr)
        if text != gateway:
            yield text


def pool_size(net: Network) -> int:
    """How many endpoint addresses ``net`` can hand out."""
    size = max(net.network.num_addresses - 2, 0)
    return size - (1 if net.gateway is not None else 0)


def free_addresses(net: Network, taken: Collection[str]) -> Iterator[str]:
    """Usable addresses not in ``taken``, lowest first (lazy: cheap even for a /8)."""
    return (a for a in usable_addresses(net) if a not in taken)


def check_requested(net: Network, ip: str) -> str | None:
    """Why ``ip`` cannot be an endpoint address of ``net``, or None if it can. Pure."""
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        return f"{brief(ip)} is not a valid IPv4 address"
    subnet = net.network
    if addr not in subnet:
        return f"{ip} is outside subnet {net.subnet} of network {net.name}"
    if addr in (subnet.network_address, subnet.broadcast_address):
        return f"{ip} is the network or broadcast address of {net.subnet}"
    if net.gateway is not None and ip == net.gateway:
        return f"{ip} is the gateway of network {net.name}"
    return None


def free_vnis(taken: Collection[int], start: int = VNI_MIN) -> Iterator[int]:
    """VNIs not in ``taken``, ascending from ``start``."""
    return (v for v in range(start, VNI_MAX + 1) if v not in taken)

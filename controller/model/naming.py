"""Names of owned kernel objects and derived addresses. Pure functions.

Every interface heddle creates is named ``hd<kind><token>`` (at most 15 characters, Linux's
IFNAMSIZ-1) and carries the ifalias ``OWNER_ALIAS`` so garbage collection can tell heddle's objects
from anyone else's, also after a restart (the names alone would be a weaker claim).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress

IFNAME_MAX = 15
PREFIX = "hd"
OWNER_ALIAS = "heddle"


def bridge_name(vni: int) -> str:
    """The Linux bridge of the network with ``vni`` (``hdb`` + VNI in hex, ≤ 9 chars)."""
    return f"hdb{vni:x}"


def vxlan_name(vni: int) -> str:
    """The VXLAN device of the network with ``vni``."""
    return f"hdx{vni:x}"


@functools.lru_cache(maxsize=1 << 16)  # a plan names every local endpoint's veths, every pass
def _token(network: str, endpoint_id: str) -> str:
    return hashlib.sha256(f"{network}/{endpoint_id}".encode()).hexdigest()[:10]


def veth_host_name(network: str, endpoint_id: str) -> str:
    """Host-side veth of an endpoint: stable across restarts, unique per (network, id)."""
    return f"hdv{_token(network, endpoint_id)}"


def veth_peer_name(network: str, endpoint_id: str) -> str:
    """Temporary name of the endpoint side before it moves into its namespace (or to Docker)."""
    return f"hdp{_token(network, endpoint_id)}"


def derive_mac(vni: int, ip: str) -> str:
    """A locally administered unicast MAC from the endpoint address: ``02:<vni low byte>:<ip>``
    for IPv4 (a dual-stack endpoint's MAC derives from its IPv4 address), the low 32 bits of
    the address for IPv6.

    Unique within a network because addresses are (IPv6: the allocator hands out the first
    2^32 addresses of a subnet only, ``controller/ipam.py``); the VNI byte keeps overlapping
    subnets of different networks apart when someone captures on a shared segment.
    """
    packed = ipaddress.ip_address(ip).packed[-4:]
    return ":".join(f"{b:02x}" for b in (0x02, vni & 0xFF, *packed))


NETNS_DIR = "/run/netns"


def netns_path(netns: str) -> str:
    """The file of an endpoint's namespace: a name is under ``/run/netns`` (where ``ip netns``
    binds it), an absolute path (``check_netns`` allows a few) is itself."""
    return netns if netns.startswith("/") else f"{NETNS_DIR}/{netns}"

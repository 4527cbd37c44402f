"""The kernel backend's part of egress (``controller/model/egress.py``): the gateway address
and MAC on an egress network's bridge, and IPv4 forwarding of the host namespace. The rules
that forward, masquerade and isolate are heddle's nftables tables
(``controller/model/nft_filter.py``).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from controller.dataplane.netns_socket import sysctl
from controller.model.kernel_state import LinkState

FORWARDING = "net.ipv4.ip_forward"


def _cidrs(ipr: Any, index: int | None = None) -> list[tuple[int, str]]:
    kw = {"index": index} if index is not None else {}
    return [
        (int(a["index"]), f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
        for a in ipr.get_addr(family=socket.AF_INET, **kw)
    ]


def bridge_addresses(ipr: Any, links: Mapping[str, LinkState]) -> dict[str, tuple[str, ...]]:
    """The IPv4 addresses of every owned bridge in ``links`` that has any (one address dump).
    Raises ``NetlinkError``/``OSError``."""
    owned = {lk.index: name for name, lk in links.items() if lk.owned and lk.kind == "bridge"}
    out: dict[str, list[str]] = {}
    for index, cidr in _cidrs(ipr):
        if index in owned:
            out.setdefault(owned[index], []).append(cidr)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def set_bridge_address(ipr: Any, index: int, mac: str | None, wanted: tuple[str, ...]) -> None:
    """Give bridge ``index`` the MAC ``mac`` (when set) and exactly the IPv4 addresses
    ``wanted``. Idempotent. Raises ``NetlinkError``."""
    if mac is not None:
        ipr.link("set", index=index, address=mac)
    have = {cidr for _, cidr in _cidrs(ipr, index)}
    for cidr in sorted(have - set(wanted)):
        ip, length = cidr.split("/")
        ipr.addr("del", index=index, address=ip, prefixlen=int(length))
    for cidr in sorted(set(wanted) - have):
        ip, length = cidr.split("/")
        ipr.addr("replace", index=index, address=ip, prefixlen=int(length))


def forwarding(netns: str | None) -> bool:
    """Whether the host namespace forwards IPv4. Raises ``OSError``."""
    return sysctl(netns, FORWARDING) == "1"


def enable_forwarding(netns: str | None) -> None:
    """Turn IPv4 forwarding on in the host namespace. Raises ``OSError``."""
    sysctl(netns, FORWARDING, "1")

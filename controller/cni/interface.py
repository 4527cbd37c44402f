"""What an endpoint's interface looks like inside its namespace, read from the kernel: the
readiness check of CNI ADD (the agent has built it) and the comparison of CNI CHECK.

Reads only; the agent's driver is the one writer (``controller/dataplane/kernel.py``).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

from controller.dataplane.netns_socket import iproute_in
from controller.model.naming import OWNER_ALIAS
from controller.model.records import Endpoint

IFF_UP = 0x1


@dataclass(frozen=True, slots=True)
class InterfaceSeen:
    """An interface as the kernel reports it."""

    owned: bool
    up: bool
    mac: str
    addresses: tuple[str, ...]  # "ip/prefixlen", IPv4


def read_interface(netns: str, ifname: str) -> InterfaceSeen | None:
    """``ifname`` in ``netns`` (a name or a path); None when the namespace or the interface
    does not exist. Raises ``OSError``/``NetlinkError`` for other failures (retrying may help)."""
    try:
        ipr = iproute_in(netns)
    except FileNotFoundError:
        return None
    try:
        try:
            link = ipr.link("get", ifname=ifname)[0]
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        addrs = tuple(
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(family=socket.AF_INET, index=link["index"])
        )
        return InterfaceSeen(
            owned=link.get("IFLA_IFALIAS") == OWNER_ALIAS,
            up=bool(link["flags"] & IFF_UP),
            mac=str(link.get("IFLA_ADDRESS", "")),
            addresses=addrs,
        )
    finally:
        ipr.close()


def differences(ep: Endpoint, prefixlen: int, seen: InterfaceSeen | None) -> list[str]:
    """How ``seen`` differs from what ``ep`` asks for (empty: it is what the agent builds).
    Pure."""
    if seen is None:
        return [f"{ep.ifname} does not exist in {ep.netns}"]
    want = f"{ep.ip}/{prefixlen}"
    out = []
    if not seen.owned:
        out.append(f"{ep.ifname} is not heddle's")
    if not seen.up:
        out.append(f"{ep.ifname} is down")
    if seen.mac != ep.mac:
        out.append(f"{ep.ifname} has MAC {seen.mac}, not {ep.mac}")
    if want not in seen.addresses:
        out.append(f"{ep.ifname} lacks address {want}")
    return out

"""What an endpoint's interface looks like inside its namespace, read from the kernel: the
readiness check of CNI ADD (the agent has built it) and the comparison of CNI CHECK.

Reads only; the agent's driver is the one writer (``controller/dataplane/kernel.py``).
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

from controller.dataplane.link_netlink import get_link
from controller.dataplane.rtnetlink import RawRtnl
from controller.model.naming import OWNER_ALIAS
from controller.model.records import Endpoint, Network

IFF_UP = 0x1


@dataclass(frozen=True, slots=True)
class InterfaceSeen:
    """An interface as the kernel reports it."""

    owned: bool
    up: bool
    mac: str
    addresses: tuple[str, ...]  # "ip/prefixlen", IPv4 and IPv6


def read_interface(netns: str, ifname: str) -> InterfaceSeen | None:
    """``ifname`` in ``netns`` (a name or a path); None when the namespace or the interface
    does not exist. Raises ``OSError`` for other failures (retrying may help). Two raw
    rtnetlink requests (``controller/dataplane/rtnetlink.py``): ADD asks this after every pass
    until the interface is there, so it is on the path of every container start."""
    try:
        rtnl = RawRtnl(netns)
    except FileNotFoundError:
        return None
    try:
        [(code, link)] = rtnl.exchange([get_link(ifname)])
        if code == errno.ENODEV:
            return None
        if link is None:
            raise OSError(code or errno.EIO, f"reading {ifname}: {os.strerror(code or errno.EIO)}")
        addrs = tuple(f"{ip}/{length}" for family in (socket.AF_INET, socket.AF_INET6)
                      for index, ip, length in rtnl.addresses(family)
                      if index == link.index)  # fmt: skip
        return InterfaceSeen(
            owned=link.alias == OWNER_ALIAS, up=bool(link.flags & IFF_UP), mac=link.mac,
            addresses=addrs,
        )  # fmt: skip
    finally:
        rtnl.close()


def differences(ep: Endpoint, net: Network, seen: InterfaceSeen | None) -> list[str]:
    """How ``seen`` differs from what ``ep`` (of ``net``) asks for (empty: it is what the agent
    builds). Pure."""
    if seen is None:
        return [f"{ep.ifname} does not exist in {ep.netns}"]
    out = []
    if not seen.owned:
        out.append(f"{ep.ifname} is not heddle's")
    if not seen.up:
        out.append(f"{ep.ifname} is down")
    if seen.mac != ep.mac:
        out.append(f"{ep.ifname} has MAC {seen.mac}, not {ep.mac}")
    for ip in ep.addresses:
        want = f"{ip}/{net.prefixlen_of(ip)}"
        if want not in seen.addresses:
            out.append(f"{ep.ifname} lacks address {want}")
    return out

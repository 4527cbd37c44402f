"""Reading pyroute2's link messages: the kernel backend's pyroute2 paths (``fast_netlink``
off, link convergence, endpoint namespaces). Pure, except ``get_link`` (one request).

The raw rtnetlink codec (``controller/dataplane/rtnetlink.py``) reads the same attributes on the
fast paths; the kernel driver's integration tests hold the two to the same answers.
"""

from __future__ import annotations

import errno
from typing import Any

from pyroute2 import IPRoute, NetlinkError

from controller.model.kernel_state import VxlanAttrs
from controller.model.naming import OWNER_ALIAS

IFF_UP = 0x1
MAIN_TABLE = 254
IFA_F_NODAD = 0x02

Msg = Any  # a parsed pyroute2 netlink message (untyped library)

#: ``addr_gen_mode none``: no IPv6 link-local address, hence no DAD, router solicitations or
#: MLD reports. Without this every bridge, VXLAN device and veth sends IPv6 multicast that the
#: overlay head-end replicates to every member host. An endpoint of an IPv6 network gets its
#: one global address from heddle (``ConfigureEndpoint``), which is all neighbour discovery
#: needs. (It cannot go into the create request: the kernel rejects IFLA_AF_SPEC there, so it
#: is a second set.)
NO_IPV6_ADDRESSES = {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})]}


def code(exc: NetlinkError) -> int:
    """The errno a pyroute2 ``NetlinkError`` carries (0 when it carries none)."""
    return int(getattr(exc, "code", 0) or 0)


def get_link(ipr: IPRoute, name: str) -> Msg | None:
    """The link called ``name`` or ``None`` (one request). Raises ``NetlinkError`` for any
    other failure than "no such device"."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if code(exc) in (errno.ENODEV, errno.ENOENT):
            return None
        raise


def kind(msg: Msg) -> str:
    """``IFLA_INFO_KIND`` (``""`` for a link without one)."""
    info = msg.get("IFLA_LINKINFO")
    found = info.get("IFLA_INFO_KIND") if info is not None else None
    return str(found) if found is not None else ""


def info_data(msg: Msg) -> Msg | None:
    info = msg.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_DATA") if info is not None else None


def port_learning(msg: Msg) -> bool | None:
    """The bridge-port learning flag of an enslaved link (``None``: not a bridge port)."""
    info = msg.get("IFLA_LINKINFO")
    if info is None or info.get("IFLA_INFO_SLAVE_KIND") != "bridge":
        return None
    data = info.get("IFLA_INFO_SLAVE_DATA")
    flag = data.get("IFLA_BRPORT_LEARNING") if data is not None else None
    return None if flag is None else bool(flag)


def owned(msg: Msg) -> bool:
    """Whether the link carries heddle's owner marker (its alias)."""
    return bool(msg.get("IFLA_IFALIAS") == OWNER_ALIAS)


def vxlan_attrs(msg: Msg) -> VxlanAttrs | None:
    """The VXLAN attributes heddle converges (``None``: not a VXLAN device)."""
    data = info_data(msg)
    if data is None or kind(msg) != "vxlan":
        return None
    return VxlanAttrs(
        vni=int(data.get("IFLA_VXLAN_ID")),
        local=data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6"),
        port=int(data.get("IFLA_VXLAN_PORT") or 0),
        learning=bool(data.get("IFLA_VXLAN_LEARNING")),
        proxy=bool(data.get("IFLA_VXLAN_PROXY")),
    )

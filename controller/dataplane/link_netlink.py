"""heddle's links built over raw rtnetlink: a network's bridge and VXLAN device
(``create_bridge``, ``create_vxlan``), an endpoint's veth pair born with the peer inside the
endpoint's namespace (``create_pair``), and the endpoint's inside configured -- MAC, MTU,
address, default route, up (``configure_inside``). The requests are packed here (pure functions
returning ``(type, flags, payload)``) and sent on ``RawRtnl`` sockets the caller holds: the
host's and, for an endpoint, one inside its namespace.

Why not pyroute2 here: building one endpoint took it about 19 requests at about 0.7 ms of
Python each -- 13 ms of the 15 ms pass that stands between an endpoint's write and its first
packet -- and a network's first endpoint on a host another 16 ms for the bridge and the VXLAN
device, where the kernel's own work is well under a millisecond each. Packed by hand an
endpoint is five round trips of a few messages each, a bridge or a VXLAN device two: a link is
created with its master, MTU, MAC and kind's settings in the message that creates it, and the
create's echo names its index (and a veth's peer's).

What the kernel ends up holding is exactly what the pyroute2 path builds (ownership marker on
every link, no IPv6 addresses of the kernel's making, learning off on every bridge port, a link
up only once marked), so observation, planning and the ``fast_netlink=False`` path are
unchanged; tests/integration/test_kernel_dataplane.py runs its cases on both paths. Only
creation goes this way: converging a link that exists stays on the pyroute2 path. Used by
``controller/dataplane/kernel_links.py`` and, for the ovs backend's veths, by
``controller/dataplane/ovs_host.py``; the layouts are the kernel's
(``include/uapi/linux/rtnetlink.h``, ``if_link.h``, ``veth.h``).
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import struct
from collections.abc import Callable, Sequence

from controller.dataplane.backend import OpFailed
from controller.dataplane.rtnetlink import (
    IFINFO,
    RawLink,
    RawRtnl,
    ip_bytes,
    ip_family,
    mac_bytes,
    rta,
)
from controller.model.naming import OWNER_ALIAS
from controller.plan.kernel_ops import ConfigureEndpoint, EnsureBridge, EnsureVeth, EnsureVxlan
from controller.plan.ovs_ops import EnsurePortVeth

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 18, 20, 24
NLM_F_ECHO, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x8, 0x100, 0x200, 0x400
IFF_UP = 0x1
_NLA_F_NESTED = 0x8000
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_MASTER = 1, 3, 4, 10
_IFLA_LINKINFO, _IFLA_IFALIAS, _IFLA_AF_SPEC, _IFLA_GROUP, _IFLA_NET_NS_FD = 18, 20, 26, 27, 28
_INFO_KIND, _INFO_DATA, _INFO_SLAVE_DATA = 1, 2, 5
_VETH_INFO_PEER = 1
_IFLA_BR_MCAST_SNOOPING = 23
_IFLA_VXLAN_ID, _IFLA_VXLAN_LOCAL, _IFLA_VXLAN_LEARNING, _IFLA_VXLAN_PROXY = 1, 4, 7, 11
_IFLA_VXLAN_PORT = 15  # big-endian
_IFLA_VXLAN_LOCAL6 = 17
_IFLA_BRPORT_LEARNING = 8
_IFLA_INET6_ADDR_GEN_MODE, _IN6_ADDR_GEN_MODE_NONE = 8, 1
_IFADDRMSG = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
_IFA_ADDRESS, _IFA_LOCAL, _IFA_F_NODAD = 1, 2, 0x02
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src len, tos, table, proto, scope, type, flags
_RTA_OIF, _RTA_GATEWAY = 4, 5
_RT_TABLE_MAIN, _RTPROT_BOOT, _RT_SCOPE_UNIVERSE, _RTN_UNICAST = 254, 3, 0, 1

Request = tuple[int, int, bytes]


def _nest(kind: int, payload: bytes) -> bytes:
    return rta(kind | _NLA_F_NESTED, payload)


def _name(name: str) -> bytes:
    return rta(_IFLA_IFNAME, name.encode() + b"\0")


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _no_ipv6_addresses() -> bytes:
    """IFLA_AF_SPEC: no IPv6 address of the kernel's own making (link-local, DAD) on the link."""
    inet6 = rta(_IFLA_INET6_ADDR_GEN_MODE, bytes([_IN6_ADDR_GEN_MODE_NONE]))
    return _nest(_IFLA_AF_SPEC, _nest(socket.AF_INET6, inet6))


def create_veth(
    name: str, mtu: int, master: int | None, peer: str, peer_mac: str, peer_netns_fd: int | None
) -> Request:
    """Create veth ``name`` (``mtu``, in bridge ``master`` unless ``None``, down) whose peer is
    born as ``peer`` with ``peer_mac`` and ``mtu`` (down) inside the namespace open as
    ``peer_netns_fd`` (None: beside it, for Docker to move). Exclusive: fails with EEXIST
    rather than touch a link that exists; echoed, so the answer carries the new link (its index)."""
    peer_msg = IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + b"".join((
        _name(peer), rta(_IFLA_ADDRESS, mac_bytes(peer_mac)), rta(_IFLA_MTU, _u32(mtu)),
        rta(_IFLA_NET_NS_FD, _u32(peer_netns_fd)) if peer_netns_fd is not None else b"",
    ))  # fmt: skip
    info = rta(_INFO_KIND, b"veth\0") + _nest(_INFO_DATA, rta(_VETH_INFO_PEER, peer_msg))
    body = IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + b"".join((
        _name(name), rta(_IFLA_MTU, _u32(mtu)),
        rta(_IFLA_MASTER, _u32(master)) if master is not None else b"",
        _nest(_IFLA_LINKINFO, info),
    ))  # fmt: skip
    return RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO, body


def _create(name: str, mtu: int, kind: str, data: bytes, *extra: bytes) -> Request:
    """An exclusive, echoed create of link ``name`` of ``kind`` (down)."""
    info = rta(_INFO_KIND, kind.encode() + b"\0") + _nest(_INFO_DATA, data)
    body = IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + b"".join(
        (_name(name), rta(_IFLA_MTU, _u32(mtu)), *extra, _nest(_IFLA_LINKINFO, info))
    )
    return RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO, body


def create_bridge(op: EnsureBridge) -> Request:
    """``op``'s bridge, multicast snooping off (the overlay floods; nothing answers IGMP
    queries), with ``op.mac`` when set."""
    mac = (rta(_IFLA_ADDRESS, mac_bytes(op.mac)),) if op.mac is not None else ()
    return _create(op.name, op.mtu, "bridge", rta(_IFLA_BR_MCAST_SNOOPING, b"\0"), *mac)


def create_vxlan(op: EnsureVxlan, master: int) -> Request:
    """``op``'s VXLAN device in bridge ``master``: learning off, ARP and neighbour discovery
    proxy on (the agent writes every FDB and neighbour entry; docs/platform.md K13); its local
    address is an IPv4 or an IPv6 VTEP."""
    data = b"".join((
        rta(_IFLA_VXLAN_ID, _u32(op.vni)),
        rta(_IFLA_VXLAN_LOCAL6, socket.inet_pton(socket.AF_INET6, op.vtep)) if ":" in op.vtep
        else rta(_IFLA_VXLAN_LOCAL, socket.inet_aton(op.vtep)),
        rta(_IFLA_VXLAN_PORT, struct.pack("!H", op.port)),
        rta(_IFLA_VXLAN_LEARNING, b"\0"), rta(_IFLA_VXLAN_PROXY, b"\1"),
    ))  # fmt: skip
    return _create(op.name, op.mtu, "vxlan", data, rta(_IFLA_MASTER, _u32(master)))


def mark(index: int, port: bool = False, mac: str | None = None, mtu: int | None = None) -> Request:
    """Mark link ``index`` as heddle's, without IPv6 addresses of the kernel's making; a bridge
    ``port`` also gets learning off (the bridge learns nothing: every MAC is a static entry);
    ``mac`` and ``mtu`` when given."""
    attrs = [rta(_IFLA_IFALIAS, OWNER_ALIAS.encode() + b"\0"), _no_ipv6_addresses()]
    if port:
        attrs.append(
            _nest(_IFLA_LINKINFO, _nest(_INFO_SLAVE_DATA, rta(_IFLA_BRPORT_LEARNING, b"\0")))
        )
    if mac is not None:
        attrs.append(rta(_IFLA_ADDRESS, mac_bytes(mac)))
    if mtu is not None:
        attrs.append(rta(_IFLA_MTU, _u32(mtu)))
    return RTM_NEWLINK, 0, IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0) + b"".join(attrs)


def set_up(index: int) -> Request:
    return RTM_NEWLINK, 0, IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)


def delete(index: int) -> Request:
    return RTM_DELLINK, 0, IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0)


def set_group(index: int, group: int) -> Request:
    """Put link ``index`` in device group ``group``."""
    return (
        RTM_NEWLINK,
        0,
        IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0) + rta(_IFLA_GROUP, _u32(group)),
    )


def delete_group(group: int) -> Request:
    """Delete every link of device group ``group`` in the socket's namespace, in one go."""
    return RTM_DELLINK, 0, IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + rta(_IFLA_GROUP, _u32(group))


def delete_together(host: RawRtnl, indexes: Sequence[int]) -> None:
    """Delete links ``indexes`` (heddle's, checked by the caller) in one kernel operation.

    Why: the kernel waits for an RCU grace period per deleted link (10-30 ms here), but once
    for all the links of one group delete (docs/platform.md K12). The links go into a device
    group of a random number first -- no one else's link is in it -- and the group is deleted.
    A veth's peer goes along, as with a single delete. Falls back to one delete per link if the
    kernel refuses. Raises ``OpFailed`` if a link cannot be deleted."""
    if len(indexes) > 1:
        group = secrets.randbelow(2**31 - 2**16) + 2**16  # 0 is the default group
        if not any(host.write([set_group(i, group) for i in indexes])):
            code = host.write([delete_group(group)])[0]
            if code in (0, errno.ENODEV):
                return
    codes = host.write([delete(i) for i in indexes])
    bad = next((c for c in codes if c not in (0, errno.ENODEV)), 0)
    if bad:
        raise _failed("deleting links", bad)


def get_link(name: str) -> Request:
    """The link called ``name`` (answered with one RTM_NEWLINK, or ENODEV)."""
    return RTM_GETLINK, 0, IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _name(name)


def replace_address(index: int, cidr: str) -> Request:
    """``ip/prefixlen`` (IPv4 or IPv6) on link ``index`` (as ``ip address replace``). An IPv6
    address is added without duplicate address detection (``nodad``): usable at once, where
    DAD would hold it tentative for a second or more and drop the first packets
    (docs/platform.md K14)."""
    ip, length = cidr.split("/")
    family, raw = ip_family(ip), ip_bytes(ip)
    flags = _IFA_F_NODAD if family == socket.AF_INET6 else 0
    body = _IFADDRMSG.pack(family, int(length), flags, 0, index)
    local = rta(_IFA_LOCAL, raw) if family == socket.AF_INET else b""
    return RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body + local + rta(_IFA_ADDRESS, raw)


def replace_default_route(index: int, gateway: str) -> Request:
    """The main table's default route of ``gateway``'s family via it out of link ``index``."""
    family, raw = ip_family(gateway), ip_bytes(gateway)
    body = _RTMSG.pack(
        family, 0, 0, 0, _RT_TABLE_MAIN, _RTPROT_BOOT, _RT_SCOPE_UNIVERSE, _RTN_UNICAST, 0
    )
    attrs = rta(_RTA_GATEWAY, raw) + rta(_RTA_OIF, _u32(index))
    return RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body + attrs


# -- the exchanges ----------------------------------------------------------------------------
def _failed(what: str, code: int) -> OpFailed:
    return OpFailed(f"netlink: {what}: {os.strerror(code)}")


def _send_create(host: RawRtnl, req: Request, name: str, taken: Callable[[], str]) -> RawLink:
    """Send the exclusive create ``req`` for link ``name``: the new link (from the echo, or
    asked for on a kernel before 6.3, which sends none). ``OpFailed(taken())`` when the name
    is taken."""
    [(code, link)] = host.exchange([req])
    if code == errno.EEXIST:
        raise OpFailed(taken())
    if code:
        raise _failed(f"creating {name}", code)
    if link is None:
        [(code, link)] = host.exchange([get_link(name)])
        if link is None:
            raise _failed(f"reading {name} back", code or errno.ENODEV)
    return link


def _finish(host: RawRtnl, link: RawLink, name: str, steps: Callable[[], list[int]]) -> int:
    """Run ``steps`` (the answers of what sets the new ``link`` up); on any failure delete the
    link again (a veth takes its peer along), so nothing half-made stays. Its index."""
    try:
        codes = steps()
        if any(codes):
            raise _failed(f"setting up {name}", next(c for c in codes if c))
    except BaseException:
        host.write([delete(link.index)])
        raise
    return link.index


def create_marked(
    host: RawRtnl,
    req: Request,
    name: str,
    port: bool,
    then: Callable[[int], Sequence[Request]] = lambda _index: (),
) -> int:
    """Create a link with ``req`` (``create_bridge``, ``create_vxlan``), mark it (a bridge
    ``port``: learning off too), send ``then(its index)`` and bring it up; its index. On any
    failure after the create the link is deleted again. Raises ``OpFailed``; a name that is
    taken is refused, never adopted."""
    link = _send_create(host, req, name, lambda: (
        f"cannot create {name}: a link of that name (or a VXLAN device with the same VNI and "
        "port) already exists"
    ))  # fmt: skip
    i = link.index
    return _finish(host, link, name, lambda: host.write([mark(i, port=port), *then(i), set_up(i)]))


def create_pair(
    host: RawRtnl,
    op: EnsureVeth | EnsurePortVeth,
    bridge: int | None,
    inside: tuple[RawRtnl, int] | None = None,
) -> int:
    """Create ``op``'s pair in bridge ``bridge`` (``None``: no master, an OVS port), mark both
    ends, and bring the host side up; return the host side's index. With ``inside`` -- (a
    socket in ``op.netns``, a descriptor of it) -- the peer is born there as ``op.ifname``;
    without, beside the host side as ``op.peer_name`` (Docker moves it). On any failure after
    the create the pair is deleted again (deleting one end deletes both), so nothing half-made
    stays. Raises ``OpFailed``; a name taken on either side is refused, never adopted."""
    peer_name = op.ifname if inside is not None else op.peer_name
    peer_sock = inside[0] if inside is not None else host
    fd = inside[1] if inside is not None else None

    def taken() -> str:
        if inside is not None and peer_sock.exchange([get_link(peer_name)])[0][0] == 0:
            return f"{op.netns}/{op.ifname} exists and is not owned by heddle"
        return (f"cannot create {op.host_name}: a link of that name (or of its peer's, "
                f"{peer_name}) already exists")  # fmt: skip

    req = create_veth(op.host_name, op.mtu, bridge, peer_name, op.peer_mac, fd)
    link = _send_create(host, req, op.host_name, taken)

    def steps() -> list[int]:
        peer = link.link
        if not peer:  # no IFLA_LINK in the answer: ask the peer's side
            [(code, inner)] = peer_sock.exchange([get_link(peer_name)])
            if inner is None:
                raise _failed(f"finding the peer {peer_name}", code or errno.ENODEV)
            peer = inner.index
        codes = host.write([mark(link.index, port=bridge is not None), set_up(link.index)])
        return codes + peer_sock.write([mark(peer)])

    return _finish(host, link, op.host_name, steps)


def configure_inside(inside: RawRtnl, op: ConfigureEndpoint) -> bool:
    """Give the endpoint's own side ``op.ifname`` (a socket in ``op.netns``) its MAC, MTU,
    addresses and default routes, and bring it up; False when there is no such link (the caller
    takes the path that moves a peer in). Idempotent. Raises ``OpFailed``; a link of that name
    that is not heddle's is refused."""
    [(code, link)] = inside.exchange([get_link(op.ifname)])
    if code == errno.ENODEV:
        return False
    if link is None:
        raise _failed(f"reading {op.netns}/{op.ifname}", code or errno.EIO)
    if link.alias != OWNER_ALIAS:
        raise OpFailed(f"{op.netns}/{op.ifname} exists and is not owned by heddle")
    reqs = [mark(link.index, mac=op.mac, mtu=op.mtu), set_up(link.index),
            *(replace_address(link.index, a) for a in op.addresses),
            *(replace_default_route(link.index, g) for g in op.gateways)]  # fmt: skip
    codes = inside.write(reqs)
    if any(codes):
        whats = ("configuring", "bringing up", *(("addressing",) * len(op.addresses)), "routing")
        what = whats[min(codes.index(next(c for c in codes if c)), len(whats) - 1)]
        raise _failed(f"{what} {op.netns}/{op.ifname}", next(c for c in codes if c))
    return True

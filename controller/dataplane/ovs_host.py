"""Host-side kernel work of the ovs backend that the kernel backend's driver does not do:
veth pairs without a Linux bridge master, TX checksum offload, and the underlay of OVS
userspace tunnelling (``netdev``). pyroute2 and one ``SIOCETHTOOL`` ioctl; no binaries.

Facts (docs/platform.md O3, O4): a frame a container sends with a partial checksum reaches the
userspace datapath raw through AF_PACKET and leaves with a bad checksum, so TCP breaks unless TX
checksum offload is off on the container's interface (O4; the setting is per device and
moves with it between namespaces). Userspace tunnelling needs the VTEP address on br-phy's
internal port (up), and the NIC without it and with ARP off, or the kernel answers ARP for the
VTEP from the NIC with the NIC's MAC (O3).

Ownership is the kernel backend's: links heddle creates carry the ``OWNER_ALIAS`` ifalias; a link
without it is never changed. The underlay NIC and br-phy's device are not heddle's links: only
the flags and the VTEP address named by the op are changed on them.

Not thread-safe: one reconciler thread per instance.
"""

from __future__ import annotations

import array
import errno
import fcntl
import ipaddress
import socket
import struct
from typing import Any

from pyroute2 import IPRoute, NetlinkError

from controller.dataplane import link_netlink, vtep_arp, vtep_nd
from controller.dataplane.backend import OpFailed
from controller.dataplane.kernel_host import HostSockets
from controller.dataplane.netns_handles import netns_fd, refuse_host_namespace
from controller.dataplane.netns_socket import enable_ipv6, socket_in
from controller.dataplane.pyroute2_msgs import IFA_F_NODAD, NO_IPV6_ADDRESSES
from controller.dataplane.rtnetlink import RawRtnl
from controller.model.naming import OWNER_ALIAS
from controller.model.ovs_state import UnderlayState
from controller.plan.ovs_ops import EnsurePortVeth, EnsureUnderlay

IFF_UP = 0x1
IFF_NOARP = 0x80
SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17

Msg = Any  # a parsed pyroute2 message (untyped library)


def _code(exc: NetlinkError) -> int:
    return int(getattr(exc, "code", 0) or 0)


def _socket_in(netns: str | None) -> socket.socket:
    """A UDP socket in ``netns`` (``None``: ours), for ioctls on that namespace's devices."""
    return socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM)


def _ethtool(sock: socket.socket | int, ifname: str, cmd: int, data: int = 0) -> int:
    """One ``struct ethtool_value`` ioctl on a socket (or its descriptor) of the device's
    namespace -- any family: the kernel hands a socket ioctl it does not know to the
    namespace's devices; returns the value the kernel wrote back."""
    buf = array.array("B", struct.pack("II", cmd, data))
    addr, _ = buf.buffer_info()
    ifreq = struct.pack("16sP", ifname.encode(), addr).ljust(40, b"\0")
    fcntl.ioctl(sock if isinstance(sock, int) else sock.fileno(), SIOCETHTOOL, ifreq)
    return int(struct.unpack("II", buf.tobytes())[1])


def tx_checksum(netns: str | None, ifname: str) -> bool | None:
    """Whether TX checksum offload is on for ``ifname`` in ``netns``; ``None`` when the
    namespace or the interface is missing. Read-only. (The driver reads over its cached
    sockets: ``HostLinks.tx_checksum``.)"""
    try:
        sock = _socket_in(netns)
    except FileNotFoundError:
        return None
    try:
        return _read_tx(sock.fileno(), ifname)
    finally:
        sock.close()


def _read_tx(fd: int, ifname: str) -> bool | None:
    try:
        return bool(_ethtool(fd, ifname, ETHTOOL_GTXCSUM))
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            return None
        raise


def set_tx_checksum(netns: str | None, ifname: str, on: bool) -> None:
    """``ethtool -K ifname tx on|off`` in ``netns``. Raises ``OSError``."""
    sock = _socket_in(netns)
    try:
        _ethtool(sock, ifname, ETHTOOL_STXCSUM, 1 if on else 0)
    finally:
        sock.close()


def _addresses(ipr: IPRoute) -> dict[int, frozenset[str]]:
    """Every link's addresses of both families, as ``address/prefixlen`` by link index (one
    dump per family); IPv6 link-local ones left out (the kernel's own, never a VTEP of the ovs
    backend)."""
    out: dict[int, set[str]] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for a in ipr.addr("dump", family=family):
            address = str(a.get("IFA_ADDRESS"))
            if not (family == socket.AF_INET6 and _link_local6(address)):
                out.setdefault(int(a["index"]), set()).add(f"{address}/{a['prefixlen']}")
    return {index: frozenset(found) for index, found in out.items()}


def _link_local6(address: str) -> bool:
    return ipaddress.IPv6Address(address).is_link_local


class HostLinks:
    """The host-namespace side (``sockets.netns``; ``None``: this process's namespace),
    through the kernel backend's ``HostSockets``: the same host sockets, and the same socket
    per endpoint namespace, as the ``ConfigureEndpoint`` that follows a veth born there (a
    second socket cost a thread entering the namespace, ~1.6 ms in the lab, on the path to the
    endpoint's first packet). The sockets are closed by their owner."""

    def __init__(self, sockets: HostSockets) -> None:
        self.netns = sockets.netns
        self._s = sockets

    def _host(self) -> IPRoute:
        return self._s.host()

    def _get(self, name: str) -> Msg | None:
        try:
            return self._host().link("get", ifname=name)[0]
        except NetlinkError as exc:
            if _code(exc) in (errno.ENODEV, errno.ENOENT):
                return None
            raise

    # -- veth ---------------------------------------------------------------------------------

    def ensure_port_veth(self, op: EnsurePortVeth) -> None:
        """See ``EnsurePortVeth``. Raises ``OpFailed`` for a link heddle does not own."""
        if op.netns is not None and self._absent(op.host_name):
            self._create_into(op, op.netns)
            return
        ipr = self._host()
        msg = self._get(op.host_name)
        if msg is not None and msg.get("IFLA_IFALIAS") != OWNER_ALIAS:
            raise OpFailed(f"link {op.host_name} exists and is not owned by heddle")
        if msg is None:
            if self._get(op.peer_name) is not None:
                raise OpFailed(f"peer name {op.peer_name} is taken in the host namespace")
            try:
                ipr.link(
                    "add",
                    ifname=op.host_name,
                    kind="veth",
                    mtu=op.mtu,
                    peer={"ifname": op.peer_name, "address": op.peer_mac, "mtu": op.mtu},
                )
            except NetlinkError as exc:
                if _code(exc) == errno.EEXIST:
                    raise OpFailed(f"link {op.host_name} appeared concurrently") from exc
                raise
            self._mark(op.host_name)
            self._mark(op.peer_name)
            if op.tx_checksum_off:
                set_tx_checksum(self.netns, op.peer_name, on=False)
            msg = self._get(op.host_name)
            if msg is None:
                raise OpFailed(f"link {op.host_name} vanished right after it was created")
        ipr.link("set", index=msg["index"], mtu=op.mtu, state="up")
        peer = self._get(op.peer_name)
        if peer is not None and peer.get("IFLA_IFALIAS") == OWNER_ALIAS:
            ipr.link("set", index=peer["index"], address=op.peer_mac, mtu=op.mtu)

    def tx_checksum(self, netns: str, ifname: str) -> bool | None:
        """``tx_checksum`` over the namespace's cached socket (no thread to enter it): whether
        TX checksum offload is on for ``ifname`` in endpoint namespace ``netns``; ``None`` when
        the namespace or the interface is missing. Read-only."""
        inside = self._s.raw_in(netns)
        return None if inside is None else _read_tx(inside.fileno(), ifname)

    def _rtnl(self) -> RawRtnl:
        return self._s.rtnl()

    def _absent(self, name: str) -> bool:
        """Whether there is no link ``name`` in the host namespace (one raw request)."""
        [(code, _)] = self._rtnl().exchange([link_netlink.get_link(name)])
        return code == errno.ENODEV

    def _create_into(self, op: EnsurePortVeth, netns: str) -> None:
        """The pair with its peer born inside ``netns`` as ``op.ifname``, over raw rtnetlink
        (``link_netlink.create_pair``, no master), then TX checksum off inside. Nothing half-made
        stays: a pair whose checksum cannot be set is deleted again."""
        refuse_host_namespace(netns, self.netns)
        inside = self._s.raw_in(netns)
        if inside is None:
            raise OpFailed(f"network namespace {netns} does not exist")
        with netns_fd(netns) as fd:
            index = link_netlink.create_pair(self._rtnl(), op, None, (inside, fd))
        if op.tx_checksum_off:
            try:  # on the namespace's rtnetlink socket: no thread to enter the namespace
                _ethtool(inside.fileno(), op.ifname, ETHTOOL_STXCSUM, 0)
            except OSError:
                self._rtnl().write([link_netlink.delete(index)])
                raise

    def _mark(self, name: str) -> None:
        """The owner marker, right after creation (the kernel ignores it in the create
        request), and no IPv6 addresses (as the kernel backend does: no IPv6 multicast from
        heddle's devices); a link that cannot be marked is deleted again (it would block its
        name)."""
        ipr = self._host()
        msg = self._get(name)
        if msg is None:
            raise OpFailed(f"link {name} vanished right after it was created")
        try:
            ipr.link("set", index=msg["index"], ifalias=OWNER_ALIAS)
            ipr.link("set", index=msg["index"], IFLA_AF_SPEC=NO_IPV6_ADDRESSES)
        except NetlinkError:
            ipr.link("del", index=msg["index"])
            raise

    # -- underlay -----------------------------------------------------------------------------

    def mac_of(self, name: str) -> str | None:
        """The MAC of link ``name`` in the host namespace; ``None`` when there is none."""
        msg = self._get(name)
        return None if msg is None else str(msg.get("IFLA_ADDRESS"))

    def observe_underlay(self, nic: str, phy: str) -> UnderlayState:
        """The NIC's and br-phy's device state (see ``UnderlayState``). Read-only."""
        n, p = self._get(nic), self._get(phy)
        found = _addresses(self._host())
        none: frozenset[str] = frozenset()
        return UnderlayState(
            nic_present=n is not None,
            nic_up=n is not None and bool(n["flags"] & IFF_UP),
            nic_noarp=n is not None and bool(n["flags"] & IFF_NOARP),
            nic_addresses=found.get(int(n["index"]), none) if n is not None else none,
            phy_present=p is not None,
            phy_up=p is not None and bool(p["flags"] & IFF_UP),
            phy_addresses=found.get(int(p["index"]), none) if p is not None else none,
        )

    def ensure_underlay(self, op: EnsureUnderlay) -> None:
        """See ``EnsureUnderlay``: the address is added to br-phy before it leaves the NIC, so
        the connected route never disappears. Raises ``OpFailed``."""
        ipr = self._host()
        nic, phy = self._get(op.nic), self._get(op.phy)
        if nic is None:
            raise OpFailed(f"underlay device {op.nic} does not exist")
        if phy is None:
            raise OpFailed(f"{op.phy} has no device yet (is ovs-vswitchd running in this netns?)")
        if op.prefixlen is None:
            raise OpFailed(
                f"VTEP {op.vtep} is on neither {op.nic} nor {op.phy}: configure it on {op.nic}"
            )
        six = ipaddress.ip_interface(f"{op.vtep}/{op.prefixlen}").version == 6  # validates
        ipr.link("set", index=nic["index"], flags=IFF_NOARP, change=IFF_NOARP)
        ipr.link("set", index=nic["index"], state="up")
        if six:  # no link-local address (no RS, DAD or MLD onto the underlay), IPv6 on
            ipr.link("set", index=phy["index"], IFLA_AF_SPEC=NO_IPV6_ADDRESSES)
            if not enable_ipv6(self.netns, op.phy):
                raise OpFailed(f"{op.phy} vanished while configuring it")
        ipr.link("set", index=phy["index"], state="up")
        ipr.addr("replace", index=phy["index"], address=op.vtep, prefixlen=op.prefixlen,
                 **({"flags": IFA_F_NODAD} if six else {}))  # fmt: skip
        moved = False
        for a in ipr.addr("dump", family=socket.AF_INET6 if six else socket.AF_INET):
            if a["index"] == nic["index"] and a.get("IFA_ADDRESS") == op.vtep:
                try:
                    ipr.addr("del", index=nic["index"], address=op.vtep, prefixlen=a["prefixlen"])
                    moved = True
                except NetlinkError as exc:
                    if _code(exc) != errno.EADDRNOTAVAIL:
                        raise
        if moved:
            # The VTEP now answers from br-phy's MAC. Peers that resolved it while it was on the
            # NIC (kernel ARP caches, OVS tnl/neigh caches) would keep sending tunnel packets to
            # the NIC's MAC until their entry ages out: tell them now, as a NIC failover would.
            phy_mac = str(phy.get("IFLA_ADDRESS"))
            announce = vtep_nd.announce if six else vtep_arp.announce
            try:
                announce(self.netns, op.phy, op.vtep, phy_mac)
            except OSError as exc:
                raise OpFailed(f"announcing {op.vtep} on {op.phy} failed: {exc}") from exc

"""Hand-made packets for the lab's attack tests: VXLAN from anywhere on the underlay, and the
frames an endpoint could forge. Pure builders plus one sender; nothing here is used by an agent.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from controller.dataplane.netns_socket import in_netns, socket_in

VXLAN_PORT = 4789
ETH_IPV4, ETH_ARP = 0x0800, 0x0806


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, ident: int = 0x4844) -> bytes:
    """An Ethernet frame carrying an ICMP echo request ``src_ip`` -> ``dst_ip``."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"heddle-attack"
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    src, dst = ipaddress.IPv4Address(src_ip).packed, ipaddress.IPv4Address(dst_ip).packed
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0x4844, 0, 64, 1, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return _mac(dst_mac) + _mac(src_mac) + struct.pack("!H", ETH_IPV4) + ip + icmp


def vxlan(vni: int, inner: bytes) -> bytes:
    """The UDP payload of a VXLAN packet: header (flags I, ``vni``) + inner frame."""
    return struct.pack("!B3xI", 0x08, vni << 8) + inner


def send_vxlan(netns: str, src_ip: str, vtep: str, vni: int, inner: bytes, count: int = 5) -> None:
    """Send ``count`` VXLAN packets from ``src_ip`` in ``netns`` to ``vtep``:4789 (IPv4 or
    IPv6, as ``src_ip``)."""
    family = socket.AF_INET6 if ":" in src_ip else socket.AF_INET
    sock = socket_in(netns, family, socket.SOCK_DGRAM)
    try:
        sock.bind((src_ip, 0))
        for _ in range(count):
            sock.sendto(vxlan(vni, inner), (vtep, VXLAN_PORT))
    finally:
        sock.close()


ND_ADVERT = 136
_ND_OVERRIDE = 0x20000000
_ND_TARGET_LLADDR = 2
_IPV6_MULTICAST_HOPS = 18
_ALL_NODES = "ff02::1"


def send_advert(netns: str, target: str, mac: str, ifname: str = "eth0", count: int = 3) -> None:
    """Send ``count`` unsolicited neighbour advertisements (override set) from ``netns`` out of
    ``ifname`` to all nodes: "``target`` is at ``mac``" -- what a host that wants another's
    traffic would announce. Hop limit 255, as receivers require; the kernel picks the source
    address and fills in the checksum."""
    body = struct.pack("!BBHI16s", ND_ADVERT, 0, 0, _ND_OVERRIDE,
                       ipaddress.IPv6Address(target).packed)  # fmt: skip
    body += struct.pack("!BB6s", _ND_TARGET_LLADDR, 1, _mac(mac))
    sock = socket_in(netns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MULTICAST_HOPS, 255)
        scope = in_netns(netns, lambda: socket.if_nametoindex(ifname))
        for _ in range(count):
            sock.sendto(body, (_ALL_NODES, 0, 0, scope))
    finally:
        sock.close()

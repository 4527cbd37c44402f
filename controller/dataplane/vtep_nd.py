"""Neighbour discovery on an IPv6 underlay for OVS userspace tunnelling: what
``dataplane/vtep_arp.py`` does with ARP for IPv4 VTEPs -- resolve member VTEPs ahead of traffic,
announce our own -- with ICMPv6 solicitations and advertisements (RFC 4861 sections 4.3, 4.4,
7.2.6; docs/platform.md O12).

Frames are built here (Ethernet, IPv6 with hop limit 255 as RFC 4861 demands, ICMPv6 with its
checksum over the pseudo-header) and exchanged on br-phy's device
(``dataplane/vtep_exchange.py``). No state.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable

from controller.dataplane.vtep_exchange import exchange, send

ETH_P_IPV6 = 0x86DD
ND_SOLICIT, ND_ADVERT = 135, 136
_OPT_SOURCE_LL, _OPT_TARGET_LL = 1, 2
_FLAG_OVERRIDE = 0x20000000
_ALL_NODES = ipaddress.IPv6Address("ff02::1")
_IPV6 = struct.Struct("!IHBB16s16s")


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ip6(text: str | ipaddress.IPv6Address) -> bytes:
    return ipaddress.IPv6Address(text).packed


def _checksum(src: bytes, dst: bytes, icmp: bytes) -> int:
    """The ICMPv6 checksum of ``icmp`` (its checksum field zero) with the IPv6 pseudo-header."""
    data = src + dst + struct.pack("!I3xB", len(icmp), socket.IPPROTO_ICMPV6) + icmp
    data += b"\0" * (len(data) % 2)
    total = sum(int(w) for w in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(src_mac: str, dst_mac: bytes, src: bytes, dst: bytes, body: bytes) -> bytes:
    icmp = body[:2] + struct.pack("!H", _checksum(src, dst, body)) + body[4:]
    ip = _IPV6.pack(6 << 28, len(icmp), socket.IPPROTO_ICMPV6, 255, src, dst)
    return dst_mac + _mac(src_mac) + struct.pack("!H", ETH_P_IPV6) + ip + icmp


def solicited_node(target: str) -> tuple[bytes, bytes]:
    """The solicited-node multicast address of ``target`` and its Ethernet address. Pure."""
    low = _ip6(target)[-3:]
    group = _ip6("ff02::1:ff00:0")[:13] + low
    return group, b"\x33\x33" + group[-4:]


def solicit_frame(mac: str, ip: str, target: str) -> bytes:
    """A neighbour solicitation for ``target`` from ``ip``/``mac``, to its solicited-node
    group, with our link-layer address as its option. Pure."""
    group, group_mac = solicited_node(target)
    body = struct.pack("!BBH4x16sBB6s", ND_SOLICIT, 0, 0, _ip6(target), _OPT_SOURCE_LL, 1,
                       _mac(mac))  # fmt: skip
    return _frame(mac, group_mac, _ip6(ip), group, body)


def advert_frame(mac: str, ip: str) -> bytes:
    """An unsolicited neighbour advertisement (override set) of ``ip`` at ``mac``, to all
    nodes. Pure."""
    body = struct.pack("!BBHI16sBB6s", ND_ADVERT, 0, 0, _FLAG_OVERRIDE, _ip6(ip), _OPT_TARGET_LL,
                       1, _mac(mac))  # fmt: skip
    return _frame(mac, b"\x33\x33" + _ALL_NODES.packed[-4:], _ip6(ip), _ALL_NODES.packed, body)


def parse_advert(frame: bytes) -> tuple[str, str] | None:
    """``(target, its MAC)`` of a neighbour advertisement frame (the target link-layer option,
    else the Ethernet source); ``None`` for anything else. Pure."""
    if len(frame) < 14 + _IPV6.size + 24 or frame[12:14] != b"\x86\xdd":
        return None
    _vtc, _plen, nxt, hops, _src, _dst = _IPV6.unpack_from(frame, 14)
    icmp = frame[14 + _IPV6.size :]
    if nxt != socket.IPPROTO_ICMPV6 or hops != 255 or icmp[0] != ND_ADVERT:
        return None
    target = str(ipaddress.IPv6Address(icmp[8:24]))
    mac = frame[6:12]
    off = 24
    while off + 8 <= len(icmp) and icmp[off + 1]:
        if icmp[off] == _OPT_TARGET_LL:
            mac = icmp[off + 2 : off + 8]
            break
        off += icmp[off + 1] * 8
    return target, ":".join(f"{b:02x}" for b in mac)


def resolve(
    netns: str | None,
    ifname: str,
    mac: str,
    ip: str,
    targets: Iterable[str],
    wait: float = 0.1,
    tries: int = 2,
) -> dict[str, str]:
    """Solicit every address in ``targets`` from ``ip``/``mac`` out of ``ifname`` (in
    ``netns``), up to ``tries`` rounds of ``wait`` seconds for those still silent; ``{ip:
    mac}`` of those that answered (addresses in canonical text). Raises ``OSError`` when the
    socket fails."""
    want = [str(ipaddress.IPv6Address(t)) for t in targets]

    def request(target: str) -> bytes:
        return solicit_frame(mac, ip, target)

    return exchange(netns, ifname, ETH_P_IPV6, request, parse_advert, want, wait, tries)


def announce(netns: str | None, ifname: str, ip: str, mac: str) -> None:
    """Send an unsolicited neighbour advertisement (override set) for ``ip`` at ``mac`` out of
    ``ifname``: Linux updates an existing entry from it, and OVS's tunnel-neighbour cache snoops
    it. Raises ``OSError``."""
    send(netns, ifname, ETH_P_IPV6, (advert_frame(mac, ip),))

"""Capture on the lab's underlay bridge and judge every frame against the data-plane contract.

The contract (README.md: a learning-free data plane), checked by ``judge``:
* no broadcast or multicast frame on the underlay at all;
* every IPv4 frame is UDP to port 4789 between two VTEP addresses (VXLAN unicast);
* inside VXLAN: no ARP and no broadcast/multicast inner frame (the VTEP answers ARP locally,
  so unicast overlay traffic never needs flooding);
* ARP is tolerated only as *unicast* ARP between two VTEP addresses: that is the underlay's own
  neighbour maintenance (the kernel re-confirms a STALE VTEP neighbour with a unicast probe),
  not overlay traffic. A broadcast ARP would already fail the first rule, which is why the
  caller warms the underlay up before capturing.
Anything else (IPv6, other EtherTypes) is a violation.

Why a bridge in promiscuous mode: a Linux bridge hands forwarded frames to its own packet taps
only when it is promiscuous; the membership (``PACKET_MR_PROMISC``) ends with the socket.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from controller.lab.nsutil import call_in_netns

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4
VXLAN_PORT = 4789


@dataclass(frozen=True, slots=True)
class Verdict:
    """Counts of a judged capture and the list of violations (first 20 kept verbatim)."""

    frames: int
    vxlan: int
    underlay_arp: int
    violations: tuple[str, ...] = field(default=())
    violation_count: int = 0

    @property
    def clean(self) -> bool:
        return self.violation_count == 0


def _mac_is_group(mac: bytes) -> bool:
    return bool(mac[0] & 1)


def _ip(b: bytes) -> str:
    return str(ipaddress.IPv4Address(b))


def classify(frame: bytes, vteps: frozenset[str]) -> tuple[str, str | None]:
    """Return (kind, violation) for one Ethernet frame; kind is vxlan, arp or other."""
    if len(frame) < 14:
        return "other", "runt frame"
    dst, etype = frame[:6], struct.unpack("!H", frame[12:14])[0]
    if _mac_is_group(dst):
        return "other", f"broadcast/multicast frame (dst {dst.hex(':')}, ethertype {etype:#06x})"
    if etype == 0x0806:
        if len(frame) < 42:
            return "arp", "short ARP frame"
        spa, tpa = _ip(frame[28:32]), _ip(frame[38:42])
        if spa in vteps and tpa in vteps:
            return "arp", None
        return "arp", f"ARP between non-VTEP addresses {spa} -> {tpa}"
    if etype != 0x0800:
        return "other", f"non-IPv4 frame (ethertype {etype:#06x})"
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    proto, src, dstip = ip[9], _ip(ip[12:16]), _ip(ip[16:20])
    if proto != 17:
        return "other", f"IPv4 protocol {proto} {src} -> {dstip} (only VXLAN/UDP expected)"
    sport, dport = struct.unpack("!HH", ip[ihl : ihl + 4])
    if dport != VXLAN_PORT:
        return "other", f"UDP {src}:{sport} -> {dstip}:{dport} is not VXLAN"
    if src not in vteps or dstip not in vteps:
        return "vxlan", f"VXLAN between non-VTEP addresses {src} -> {dstip}"
    inner = ip[ihl + 8 + 8 :]
    if len(inner) < 14:
        return "vxlan", "VXLAN frame without an inner Ethernet header"
    vni = int.from_bytes(ip[ihl + 12 : ihl + 15], "big")
    inner_type = struct.unpack("!H", inner[12:14])[0]
    if inner_type == 0x0806:
        return "vxlan", f"ARP inside VXLAN (vni {vni}, {src} -> {dstip})"
    if _mac_is_group(inner[:6]):
        return "vxlan", f"broadcast/multicast inside VXLAN (vni {vni}, dst {inner[:6].hex(':')})"
    return "vxlan", None


def ipv4_from(frames: Iterable[bytes], src: str) -> int:
    """How many frames are IPv4 packets with source address ``src``."""
    raw = ipaddress.IPv4Address(src).packed
    return sum(1 for f in frames if f[12:14] == b"\x08\x00" and f[26:30] == raw)


def ipv6_from(frames: Iterable[bytes], src: str) -> int:
    """How many frames are IPv6 packets with source address ``src``."""
    raw = ipaddress.IPv6Address(src).packed
    return sum(1 for f in frames if f[12:14] == b"\x86\xdd" and f[22:38] == raw)


def adverts_for(frames: Iterable[bytes], target: str) -> int:
    """How many frames are neighbour advertisements (ICMPv6 136, no extension header) for
    ``target``."""
    raw = ipaddress.IPv6Address(target).packed
    return sum(
        1 for f in frames
        if f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 136 and f[62:78] == raw
    )  # fmt: skip


def from_mac(frames: Iterable[bytes], mac: str) -> int:
    """How many frames have Ethernet source ``mac`` (``aa:bb:..``), whatever they carry."""
    raw = bytes.fromhex(mac.replace(":", ""))
    return sum(1 for f in frames if f[6:12] == raw)


def arp_from(frames: Iterable[bytes], spa: str) -> int:
    """How many frames are ARP packets with sender protocol address ``spa``."""
    raw = ipaddress.IPv4Address(spa).packed
    return sum(1 for f in frames if f[12:14] == b"\x08\x06" and f[28:32] == raw)


def judge(frames: Iterable[bytes], vteps: Iterable[str]) -> Verdict:
    vset = frozenset(vteps)
    n = vx = arp = bad = 0
    violations: list[str] = []
    for f in frames:
        n += 1
        kind, problem = classify(f, vset)
        vx += kind == "vxlan" and problem is None
        arp += kind == "arp" and problem is None
        if problem is not None:
            bad += 1
            if len(violations) < 20:
                violations.append(problem)
    return Verdict(n, vx, arp, tuple(violations), bad)


def _packet_socket(ifname: str, promisc: bool) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    if promisc:
        ifindex = socket.if_nametoindex(ifname)
        mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    sock.setblocking(False)
    return sock


class Capture:
    """Collects every frame received on ``ifname`` (in ``netns``, root if None) until ``stop()``.

    Outgoing copies are ignored so that each frame forwarded by the bridge counts once.
    """

    def __init__(self, ifname: str, netns: str | None = None, promisc: bool = True) -> None:
        self.ifname = ifname
        self.frames: list[bytes] = []
        if netns is None:
            self._sock = _packet_socket(ifname, promisc)
        else:
            self._sock = call_in_netns(netns, lambda: _packet_socket(ifname, promisc))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture-{ifname}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self._sock], [], [], 0.05)
            if not r:
                continue
            while True:
                try:
                    data, addr = self._sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                if addr[2] != PACKET_OUTGOING:
                    self.frames.append(data)

    def stop(self) -> list[bytes]:
        self._stop.set()
        self._thread.join()
        self._sock.close()
        return self.frames


@contextlib.contextmanager
def capturing(ifname: str, netns: str | None = None, promisc: bool = True) -> Iterator[Capture]:
    """``with capturing(bridge) as cap: ...``; ``cap.frames`` is complete after the block."""
    cap = Capture(ifname, netns, promisc)
    try:
        yield cap
    finally:
        time.sleep(0.05)
        cap.stop()

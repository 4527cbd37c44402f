"""ARP on the underlay for OVS userspace tunnelling: resolving member VTEPs ahead of traffic,
and announcing our own VTEP (docs/platform.md O7).

Why: on the ``netdev`` datapath a tunnelled packet towards a VTEP that is not in
ovs-vswitchd's tunnel-neighbour cache is dropped while OVS sends its own ARP request -- the
first packet across hosts is lost. The agent therefore asks each member VTEP itself, from
br-phy's internal port (the VTEP address and MAC), and hands the answers to OVS
(``tnl/neigh/set``) before the flows that tunnel to that VTEP exist.

Frames are built here (RFC 826 layout for Ethernet/IPv4) and exchanged on br-phy's device
(``dataplane/vtep_exchange.py``). No state.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from controller.dataplane.vtep_exchange import exchange, send

ETH_P_ARP = 0x0806
_BROADCAST = b"\xff" * 6
_ZERO = b"\x00" * 6
_ARP = struct.Struct("!HHBBH6s4s6s4s")


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def arp_frame(op: int, sha: str, spa: str, tha: bytes, tpa: str, dst: bytes = _BROADCAST) -> bytes:
    """An Ethernet ARP frame (``op`` 1 request, 2 reply) from ``sha``. Pure."""
    eth = dst + _mac(sha) + struct.pack("!H", ETH_P_ARP)
    return eth + _ARP.pack(1, 0x0800, 6, 4, op, _mac(sha), _ip(spa), tha, _ip(tpa))


def parse_reply(frame: bytes) -> tuple[str, str, str] | None:
    """``(sender ip, sender mac, target ip)`` of an ARP reply frame; ``None`` for anything
    else. Pure."""
    if len(frame) < 14 + _ARP.size or frame[12:14] != b"\x08\x06":
        return None
    htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = _ARP.unpack_from(frame, 14)
    if (htype, ptype, hlen, plen, op) != (1, 0x0800, 6, 4, 2):
        return None
    mac = ":".join(f"{b:02x}" for b in sha)
    return str(ipaddress.IPv4Address(spa)), mac, str(ipaddress.IPv4Address(tpa))


def resolve(
    netns: str | None,
    ifname: str,
    mac: str,
    ip: str,
    targets: Iterable[str],
    wait: float = 0.1,
    tries: int = 2,
) -> dict[str, str]:
    """Ask every address in ``targets`` for its MAC with ARP requests from ``ip``/``mac`` out
    of ``ifname`` (in ``netns``), up to ``tries`` rounds of ``wait`` seconds for those still
    silent; ``{ip: mac}`` of those that answered. Raises ``OSError`` when the socket fails."""

    def answer(frame: bytes) -> tuple[str, str] | None:
        reply = parse_reply(frame)
        return None if reply is None or reply[2] != ip else (reply[0], reply[1])

    def request(target: str) -> bytes:
        return arp_frame(1, mac, ip, _ZERO, target)

    return exchange(netns, ifname, ETH_P_ARP, request, answer, targets, wait, tries)


def announce(netns: str | None, ifname: str, ip: str, mac: str) -> None:
    """Send gratuitous ARP (a request and a reply) for ``ip`` at ``mac`` out of ``ifname``.

    Linux updates an existing neighbour entry from either; OVS's tunnel-neighbour cache snoops
    gratuitous ARP of both kinds. Raises ``OSError``."""
    send(netns, ifname, ETH_P_ARP, (arp_frame(op, mac, ip, _ZERO, ip) for op in (1, 2)))

"""Sending the neighbour announcements ``controller/plan/announce.py`` plans: one frame into a local
endpoint through its port, the host side of its veth pair, in the agent's namespace.

The same on both backends: the port is a Linux device either way (a bridge port, or an OVS
port that the ``netdev`` datapath reads through its own packet socket, which skips frames the
host sends out of the device). A frame sent out of the host side is received by the endpoint
alone; neither the bridge nor OVS sees it, so no guard, flow or FDB entry is involved.

Best effort by design: an announcement only shortens a wait the endpoint would end by itself
(its next neighbour retry), so a port that went away or is down is skipped and counted, never
an error of the pass.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.dataplane.netns_socket import socket_in
from controller.dataplane.vtep_arp import ETH_P_ARP, arp_frame
from controller.dataplane.vtep_nd import ETH_P_IPV6, advert_frame
from controller.plan.announce import Announcement

_ZERO = b"\x00" * 6
#: the port is gone or not up: the endpoint went away meanwhile, or is not ready yet
_GONE = {errno.ENODEV, errno.ENXIO, errno.ENETDOWN}


@dataclass(frozen=True, slots=True)
class Sent:
    """What ``send`` did: frames ``sent``; ``gone``: skipped, their port missing or down;
    ``failed``: refused for another reason (the first one's error in ``error``)."""

    sent: int = 0
    gone: int = 0
    failed: int = 0
    error: str | None = None


class Announcing(Protocol):
    """Sends announcements. ``send`` never raises for a port's failure (it counts it)."""

    def send(self, announcements: Sequence[Announcement]) -> Sent: ...

    def close(self) -> None: ...


def frame(a: Announcement) -> tuple[int, bytes]:
    """``(ethertype, frame)`` for one announcement. Pure.

    IPv4: a gratuitous ARP request (sender and target address both ``a.ip``) sent to the
    endpoint's MAC -- Linux lets a gratuitous one replace an entry's MAC at once, where a plain
    reply waits out ``locktime``. IPv6: an unsolicited advertisement with the override flag, to
    all nodes (RFC 4861 7.2.6)."""
    if a.six:
        return ETH_P_IPV6, advert_frame(a.mac, a.ip)
    to = bytes.fromhex(a.to_mac.replace(":", ""))
    return ETH_P_ARP, arp_frame(1, a.mac, a.ip, _ZERO, a.ip, dst=to)


class Announcer:
    """``Announcing`` over one ``AF_PACKET`` socket in the host's namespace (``netns``; None:
    the agent's own), opened on first use and kept (protocol 0: it receives nothing). Not
    thread-safe (the reconciler's)."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._sock: socket.socket | None = None

    def send(self, announcements: Sequence[Announcement]) -> Sent:
        if not announcements:
            return Sent()
        sent = gone = failed = 0
        error = None
        try:
            sock = self._socket()
        except OSError as exc:
            return Sent(failed=len(announcements), error=f"no packet socket: {exc}")
        for a in announcements:
            ethertype, data = frame(a)
            try:
                sock.sendto(data, (a.port, ethertype))
                sent += 1
            except OSError as exc:
                if exc.errno in _GONE:
                    gone += 1
                else:
                    failed += 1
                    error = error or f"{a.port}: {exc.strerror or exc}"
        return Sent(sent, gone, failed, error)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket_in(self._netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

"""The raw-socket exchange behind resolving member VTEPs on the underlay: send a request per
address, collect the answers, ask the silent ones again. One loop for both families -- ARP
(``dataplane/vtep_arp.py``) and neighbour discovery (``dataplane/vtep_nd.py``) differ only in
the frames they build and parse.

An ``AF_PACKET`` socket for one ethertype, in the host namespace, bound to br-phy's device.
No state.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterable

from controller.dataplane.netns_socket import socket_in


def exchange(
    netns: str | None,
    ifname: str,
    ethertype: int,
    request: Callable[[str], bytes],
    answer: Callable[[bytes], tuple[str, str] | None],
    targets: Iterable[str],
    wait: float,
    tries: int,
) -> dict[str, str]:
    """Send ``request(target)`` for every address in ``targets`` out of ``ifname`` (in
    ``netns``), up to ``tries`` rounds of ``wait`` seconds for those still silent; ``answer``
    turns a received frame into ``(address, MAC)`` or ``None``. Returns ``{address: MAC}`` of
    the targets that answered. Raises ``OSError`` when the socket fails."""
    want = set(targets)
    got: dict[str, str] = {}
    sock = socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    try:
        sock.bind((ifname, 0))
        sock.setblocking(False)
        for _ in range(tries):
            silent = sorted(want - got.keys())
            if not silent:
                break
            for target in silent:
                sock.send(request(target))
            deadline = time.monotonic() + wait
            while want - got.keys():
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    break
                while True:
                    try:
                        frame = sock.recv(2048)
                    except BlockingIOError:
                        break
                    found = answer(frame)
                    if found is not None and found[0] in want:
                        got[found[0]] = found[1]
    finally:
        sock.close()
    return got


def send(netns: str | None, ifname: str, ethertype: int, frames: Iterable[bytes]) -> None:
    """Send ``frames`` out of ``ifname`` (in ``netns``). Raises ``OSError``."""
    sock = socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    try:
        sock.bind((ifname, 0))
        for frame in frames:
            sock.send(frame)
    finally:
        sock.close()

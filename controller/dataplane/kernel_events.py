"""What the kernel announces about heddle's links and entries: decoding shared with
observation, and a listener that passes announcements on as they come.

``link_state`` and ``entry_sighting`` turn a raw rtnetlink link or neighbour message
(``controller/dataplane/rtnetlink.py``) into the terms of ``KernelState``. The same two
functions read a dump (``KernelDataPlane.observe``) and an announcement (``KernelEvents``), so
an announcement of the state an observation holds always agrees with it
(``controller/model/kernel_events.py``).

``KernelEvents`` listens on rtnetlink's link and neighbour groups of one namespace
(``docs/platform.md`` K10), in a thread of its own, and calls ``sink`` with the last sighting
of each object per received buffer -- ``None`` when the kernel dropped announcements (the
socket's buffer overflowed: ENOBUFS), so the receiver must assume anything changed. ``sync``
returns once everything announced before it was passed on (a request answered behind the
queue). It needs no privilege beyond reading the namespace.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import socket
import struct
import threading
from collections.abc import Callable, Mapping, Sequence

from controller.dataplane.netns_socket import socket_in
from controller.dataplane.rtnetlink import (
    HEADER,
    NTF_SELF,
    NUD_NOARP,
    NUD_PERMANENT,
    RawLink,
    RawRtnl,
    ip_text,
    messages,
    parse_link,
    parse_neigh,
)
from controller.model.kernel_events import (
    FdbSeen,
    LinkSeen,
    NeighSeen,
    PortFdbSeen,
    Sighting,
    last_sightings,
)
from controller.model.kernel_state import FdbEntry, LinkState, NeighEntry, PortFdbEntry, VxlanAttrs
from controller.model.naming import OWNER_ALIAS, PREFIX

log = logging.getLogger("heddle.kernel_events")

IFF_UP = 0x1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWNEIGH, RTM_DELNEIGH = 16, 17, 18, 28, 29
NLMSG_ERROR = 2
_NLM_F_REQUEST_ACK = 0x1 | 0x4
RTMGRP_LINK, RTMGRP_NEIGH = 0x1, 0x4
_IFLA_BR_MCAST_SNOOPING = 23
_IFLA_VXLAN_ID, _IFLA_VXLAN_LOCAL, _IFLA_VXLAN_LEARNING, _IFLA_VXLAN_LOCAL6 = 1, 4, 7, 17
_IFLA_VXLAN_PROXY, _IFLA_VXLAN_PORT = 11, 15
_IFLA_BRPORT_LEARNING = 8
_RCVBUF = 8 << 20
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def _u8(attrs: Mapping[int, bytes] | None, kind: int) -> int | None:
    raw = attrs.get(kind) if attrs is not None else None
    return raw[0] if raw else None


def link_state(raw: RawLink, names: Mapping[int, str]) -> LinkState:
    """The ``LinkState`` of a raw link message (``names``: ifindex -> name, for the master).
    Pure."""
    snooping = None
    if raw.kind == "bridge" and raw.data is not None:
        snooping = bool(_u8(raw.data, _IFLA_BR_MCAST_SNOOPING))
    vxlan = None
    if raw.kind == "vxlan" and raw.data is not None:
        d = raw.data
        local, port, vni = d.get(_IFLA_VXLAN_LOCAL), d.get(_IFLA_VXLAN_PORT), d.get(_IFLA_VXLAN_ID)
        local6 = d.get(_IFLA_VXLAN_LOCAL6)
        text = (
            socket.inet_ntoa(local[:4]) if local and len(local) >= 4
            else socket.inet_ntop(socket.AF_INET6, local6[:16]) if local6 and len(local6) >= 16
            else None
        )  # fmt: skip
        vxlan = VxlanAttrs(
            vni=int.from_bytes(vni[:4], "little") if vni else 0,
            local=text,
            port=int.from_bytes(port[:2], "big") if port else 0,
            learning=bool(_u8(d, _IFLA_VXLAN_LEARNING)),
            proxy=bool(_u8(d, _IFLA_VXLAN_PROXY)),
        )
    learning = None
    if raw.slave_kind == "bridge":
        flag = _u8(raw.slave_data, _IFLA_BRPORT_LEARNING)
        learning = None if flag is None else bool(flag)
    return LinkState(
        name=raw.name,
        kind=raw.kind,
        owned=raw.alias == OWNER_ALIAS,
        index=raw.index,
        mtu=raw.mtu,
        mac=raw.mac,
        up=bool(raw.flags & IFF_UP),
        master=names.get(raw.master) if raw.master else None,
        mcast_snooping=snooping,
        vxlan=vxlan,
        learning=learning,
    )


def entry_sighting(
    family: int,
    ifindex: int,
    state: int,
    flags: int,
    mac: str,
    dst: str | None,
    vxlans: Mapping[int, str],
    ports: Mapping[int, tuple[str, str]],
    present: bool = True,
) -> Sighting | None:
    """What one FDB (``AF_BRIDGE``) or neighbour message says about heddle's entries, or
    ``None`` when it is about nothing heddle reads. ``vxlans``: ifindex -> name of heddle's
    VXLAN devices; ``ports``: ifindex -> (port, bridge) of heddle's bridge ports. Pure.

    A VXLAN device's own entries (``NTF_SELF``, with a destination) are its FDB; entries of a
    bridge port that are static (``NUD_NOARP``, not the port's own permanent address) are the
    bridge's; IPv4 and IPv6 entries on a VXLAN device are its neighbours."""
    if family == socket.AF_BRIDGE:
        if flags & NTF_SELF:
            if dst is not None and mac and ifindex in vxlans:
                return FdbSeen(vxlans[ifindex], FdbEntry(mac, dst), present)
        elif ifindex in ports and state & NUD_NOARP and not state & NUD_PERMANENT:
            port, bridge = ports[ifindex]
            return PortFdbSeen(bridge, PortFdbEntry(mac, port), present)
        return None
    if family in (socket.AF_INET, socket.AF_INET6) and ifindex in vxlans and dst is not None:
        entry = NeighEntry(dst, mac, bool(state & NUD_PERMANENT)) if present else None
        return NeighSeen(vxlans[ifindex], dst, entry)
    return None


def owned_devices(
    links: Mapping[str, LinkState],
) -> tuple[dict[int, str], dict[int, tuple[str, str]]]:
    """(ifindex -> name of heddle's VXLAN devices, ifindex -> (port, bridge) of heddle's ports
    on heddle's bridges): what ``entry_sighting`` needs. Pure."""
    vxlans = {lk.index: n for n, lk in links.items() if lk.owned and lk.kind == "vxlan"}
    bridges = {n for n, lk in links.items() if lk.owned and lk.kind == "bridge"}
    ports = {
        lk.index: (n, str(lk.master))
        for n, lk in links.items()
        if lk.owned and lk.master in bridges and lk.kind in ("veth", "vxlan")
    }
    return vxlans, ports


Sink = Callable[[Sequence[Sighting] | None], None]


def _probe(seq: int) -> bytes:
    """A link lookup for no link (index 0x7FFFFFFF): its answer, an error, comes behind every
    announcement queued before it (``KernelEvents.sync``)."""
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0x7FFFFFFF, 0, 0)
    return struct.pack("=LHHLL", HEADER + len(body), RTM_GETLINK, _NLM_F_REQUEST_ACK, seq, 0) + body


class KernelEvents:
    """Listens to link and neighbour announcements in ``netns`` (``None``: this process's)
    and calls ``sink`` from its own thread (see the module docstring). Entry announcements
    are not decoded while ``wanted()`` is False (links always are: the listener keeps its
    own picture of names and masters from them). ``start`` subscribes
    before it reads the links, so nothing falls between the two; ``stop`` ends the thread.
    Raises ``OSError`` from ``start`` if the namespace cannot be read."""

    def __init__(
        self, netns: str | None, sink: Sink, wanted: Callable[[], bool] = lambda: True
    ) -> None:
        self.netns = netns
        self.sink = sink
        self.wanted = wanted
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._links: dict[str, LinkState] = {}
        self._names: dict[int, str] = {}
        self._devices: tuple[dict[int, str], dict[int, tuple[str, str]]] | None = None
        self._seq = itertools.count(1)
        self._answered = 0  # the highest sync probe the thread has read the answer to
        self._cond = threading.Condition()
        self.announcements = 0  # messages read (tests and benches)
        self._held = False
        self._queue: list[bytes | None] = []  # read while held, not decoded yet (None: lost)

    def start(self) -> KernelEvents:
        sock = socket_in(self.netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, RTMGRP_LINK | RTMGRP_NEIGH))
            sock.settimeout(0.5)
            dump = RawRtnl(self.netns)
            try:
                raws = list(dump.links())
            finally:
                dump.close()
        except OSError:
            sock.close()
            raise
        self._names = {r.index: r.name for r in raws}
        self._links = {
            r.name: link_state(r, self._names) for r in raws if r.name.startswith(PREFIX)
        }
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="kernel-events", daemon=True)
        self._thread.start()
        return self

    def sync(self, timeout: float = 1.0) -> bool:
        """Return once every announcement the kernel made before this call has been passed to
        ``sink``: a request on the listening socket is answered behind everything queued there
        (a link lookup for no link). False after ``timeout`` or when not listening."""
        sock = self._sock
        if sock is None or self._thread is None:
            return False
        seq = next(self._seq)
        try:
            sock.send(_probe(seq))
        except OSError:
            return False
        with self._cond:
            return self._cond.wait_for(lambda: self._answered >= seq, timeout)

    def hold(self) -> None:
        """Keep what is read from now on undecoded until ``release``: an agent applying a pass
        makes the kernel announce every link it touches, and decoding those announcements
        while it works takes the interpreter from it between its own netlink round trips
        (about 1.3 ms of a new endpoint's veth, measured in the lab). Nothing is lost or
        reordered: after ``release``, the next buffer (``release`` sends one) decodes what was
        held first. A ``sync`` made while held returns only once released."""
        self._held = True

    def release(self) -> None:
        """Decode what was held (in the listener's thread, at once: it is woken with a
        request whose answer nobody waits for). Idempotent."""
        self._held = False
        sock = self._sock
        if sock is not None and self._queue:
            with contextlib.suppress(OSError):
                sock.send(_probe(next(self._seq)))

    def stop(self) -> None:
        """End the thread and close the socket. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            data: bytes | None
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    if not self._stop.is_set():
                        log.warning("kernel announcements stopped: %s", exc)
                        self._call(None)
                    return
                data = None  # announcements were dropped
            if self._held:
                self._queue.append(data)
                continue
            queued, self._queue = self._queue, []
            for buf in (*queued, data):
                if buf is None:
                    self._call(None)
                    continue
                seen = self.decode(buf)
                if seen:
                    self._call(seen)

    def _call(self, seen: Sequence[Sighting] | None) -> None:
        with contextlib.suppress(Exception):
            self.sink(seen)

    def decode(self, data: bytes) -> list[Sighting]:
        """The last sighting of each heddle object announced in one buffer; keeps the
        listener's own picture of the links (names, masters) up to date."""
        out: list[Sighting] = []
        entries = self.wanted()
        for off, length, mtype, seq in messages(data):
            body, end = off + HEADER, off + length
            if mtype == NLMSG_ERROR:  # the answer to a sync probe: all before it was read
                if out:
                    self._call(last_sightings(out))
                    out = []
                with self._cond:
                    self._answered = max(self._answered, seq)
                    self._cond.notify_all()
                continue
            self.announcements += 1
            if mtype in (RTM_NEWLINK, RTM_DELLINK):
                if data[body] == socket.AF_BRIDGE:
                    # the bridge's own port announcements (port state, a port leaving: an
                    # AF_BRIDGE RTM_DELLINK): not the link itself, which AF_UNSPEC describes
                    continue
                raw = parse_link(data, body, end)
                if mtype == RTM_DELLINK:
                    self._names.pop(raw.index, None)
                else:
                    self._names[raw.index] = raw.name
                if not raw.name.startswith(PREFIX):
                    continue
                self._devices = None
                link = link_state(raw, self._names) if mtype == RTM_NEWLINK else None
                if link is None:
                    self._links.pop(raw.name, None)
                else:
                    self._links[raw.name] = link
                out.append(LinkSeen(raw.name, link))
            elif mtype in (RTM_NEWNEIGH, RTM_DELNEIGH) and entries:
                family, ifindex, state, flags, lladdr, dst = parse_neigh(data, body, end)
                if self._devices is None:
                    self._devices = owned_devices(self._links)
                s = entry_sighting(
                    family, ifindex, state, flags,
                    lladdr.hex(":") if lladdr else "", ip_text(dst) if dst else None,
                    *self._devices, present=mtype == RTM_NEWNEIGH,
                )  # fmt: skip
                if s is not None:
                    out.append(s)
        return last_sightings(out)

"""Raw rtnetlink for the kernel backend: neighbour and FDB dumps and batched writes, and the
host's link dump, packed and parsed with ``struct`` on a socket of its own (never shared with
pyroute2, so sequence numbers cannot collide).

Why a codec of our own: pyroute2 spends ~70 µs of Python per dumped message and ~200 µs per
request (docs/platform.md K9), so a no-op pass at 10,000 entries cost ~0.7 s and a first pass
~2.5 s. The kernel applies every message of a buffer and acknowledges each one, so a batch
still gives each op its own result. Used by the kernel backend's modules
(``controller/dataplane/kernel_*.py``, ``link_netlink.py``), the ovs backend's host links
(``ovs_host.py``) and the CNI service's readiness check (``controller/cni/interface.py``).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from controller.dataplane.netns_socket import socket_in
from controller.plan.kernel_ops import (
    ZERO_MAC,
    AddFlood,
    DelFdb,
    DelNeigh,
    DelPortFdb,
    KernelOp,
    PutFdb,
    PutNeigh,
    PutPortFdb,
)

NTF_SELF = 0x02
NTF_MASTER = 0x04
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWNEIGH, _RTM_DELNEIGH, _RTM_GETNEIGH = 28, 29, 30
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x4, 0x300
_NLM_F_REPLACE, _NLM_F_CREATE, _NLM_F_APPEND = 0x100, 0x400, 0x800
_RCVBUF = 4 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_NDA_DST, _NDA_LLADDR = 1, 2
_NLA_TYPE_MASK = 0x3FFF
_HDR = struct.Struct("=LHHLL")  # nlmsghdr
HEADER = _HDR.size
_NDMSG = struct.Struct("=BxxxiHBB")  # ndmsg: family, ifindex, state, flags, type
_RTA = struct.Struct("=HH")
IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_RTM_NEWLINK, _RTM_GETLINK = 16, 18
_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_IFADDRMSG = struct.Struct("=BBBBi")  # ifaddrmsg: family, prefixlen, flags, scope, index
_IFA_ADDRESS = 1
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_LINK, _IFLA_MASTER = 1, 3, 4, 5, 10
_IFLA_LINK_NETNSID = 37
_IFLA_LINKINFO, _IFLA_IFALIAS, _IFLA_EXT_MASK = 18, 20, 29
_INFO_KIND, _INFO_DATA, _INFO_SLAVE_KIND, _INFO_SLAVE_DATA = 1, 2, 4, 5
_RTEXT_FILTER_SKIP_STATS = 1 << 3
_ERR = struct.Struct("=i")

RawNeigh = tuple[int, int, int, bytes | None, bytes | None]
"""(ifindex, state, flags, lladdr, dst) of one neighbour/FDB message, undecoded."""


def _open_rtnl(netns: str | None) -> socket.socket:
    """A plain NETLINK_ROUTE socket in ``netns`` (``None``: this process's namespace)."""
    return socket_in(netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """``(offset, length, type, sequence)`` of each netlink message in one received buffer.
    Raises ``OSError`` (EPROTO) for a header whose length cannot be right."""
    off = 0
    while off + _HDR.size <= len(data):
        length, mtype, _flags, mseq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            raise OSError(errno.EPROTO, "malformed netlink message")
        yield off, length, mtype, mseq
        off += (length + 3) & ~3


class RawRtnl:
    """A dedicated raw rtnetlink socket for neighbour/FDB dumps and batched entry writes (see
    the module docstring): a dump is read in a few ms, and writes go out as one ``send`` per
    chunk with one ACK per message. Not thread-safe; ``close`` when done."""

    def __init__(self, netns: str | None) -> None:
        self._sock = _open_rtnl(netns)
        self._sock.settimeout(10.0)
        try:  # room for a whole chunk of ACKs (each is a small skb with a large truesize)
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _RCVBUF)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        """The socket's descriptor (for ioctls on the devices of its namespace)."""
        return self._sock.fileno()

    def write(self, msgs: Sequence[tuple[int, int, bytes]]) -> list[int]:
        """Send ``(type, flags, payload)`` requests in one buffer; return each one's errno
        (0 = success), in order. Raises ``OSError`` if the ACKs cannot be read."""
        return [code for code, _ in self.exchange(msgs)]

    def exchange(self, msgs: Sequence[tuple[int, int, bytes]]) -> list[tuple[int, RawLink | None]]:
        """``write``, also returning the link each request was answered with (a GETLINK, an
        echoed NEWLINK; None for the others), in order. The kernel handles the messages of one
        buffer in order, each after the one before it is done."""
        seqs = [next(self._seq) for _ in msgs]
        buf = b"".join(
            _HDR.pack(_HDR.size + len(payload), mtype, flags | _NLM_F_REQUEST | _NLM_F_ACK, seq, 0)
            + payload
            for seq, (mtype, flags, payload) in zip(seqs, msgs, strict=True)
        )
        self._sock.send(buf)
        codes: dict[int, int] = {}
        links: dict[int, RawLink] = {}
        wanted = set(seqs)
        while wanted:
            data = self._sock.recv(1 << 16)
            for off, length, mtype, mseq in messages(data):
                if mseq not in wanted:
                    continue
                if mtype == _NLMSG_ERROR:
                    codes[mseq] = -_ERR.unpack_from(data, off + _HDR.size)[0]
                    wanted.discard(mseq)
                elif mtype == _RTM_NEWLINK:
                    links[mseq] = parse_link(data, off + _HDR.size, off + length)
        return [(codes[seq], links.get(seq)) for seq in seqs]

    def dump(self, family: int) -> Iterator[RawNeigh]:
        payload = _NDMSG.pack(family, 0, 0, 0, 0)
        for data, body, end in self._dump(_RTM_GETNEIGH, _RTM_NEWNEIGH, payload, "neighbour"):
            yield self._parse(data, body, end)

    def addresses(self, family: int = socket.AF_INET) -> Iterator[tuple[int, str, int]]:
        """``(ifindex, address, prefixlen)`` of every address of ``family`` (one dump)."""
        payload = _IFADDRMSG.pack(family, 0, 0, 0, 0)
        for data, body, end in self._dump(_RTM_GETADDR, _RTM_NEWADDR, payload, "address"):
            fam, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(data, body)
            raw = _attrs(data, body + _IFADDRMSG.size, end).get(_IFA_ADDRESS)
            if fam == family and raw:
                yield index, ip_text(raw), prefixlen

    def links(self) -> Iterator[RawLink]:
        """One link dump (statistics left out), each link reduced to what observation reads."""
        payload = IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + rta(
            _IFLA_EXT_MASK, struct.pack("=I", _RTEXT_FILTER_SKIP_STATS)
        )
        for data, body, end in self._dump(_RTM_GETLINK, _RTM_NEWLINK, payload, "link"):
            yield parse_link(data, body, end)

    def _dump(
        self, request: int, reply: int, payload: bytes, what: str
    ) -> Iterator[tuple[bytes, int, int]]:
        """``(buffer, body offset, end)`` of each ``reply`` message of one dump."""
        seq = next(self._seq)
        req = _HDR.pack(_HDR.size + len(payload), request, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
        self._sock.send(req + payload)
        while True:
            data = self._sock.recv(1 << 16)
            for off, length, mtype, mseq in messages(data):
                body = off + _HDR.size
                if mseq == seq:
                    if mtype in (_NLMSG_DONE, _NLMSG_ERROR):
                        code = _ERR.unpack_from(data, body)[0] if length >= _HDR.size + 4 else 0
                        if code < 0:
                            raise OSError(-code, f"{what} dump: {os.strerror(-code)}")
                        if mtype == _NLMSG_DONE or code == 0:
                            return
                    elif mtype == reply:
                        yield data, body, off + length

    @staticmethod
    def _parse(data: bytes, body: int, end: int) -> RawNeigh:
        return parse_neigh(data, body, end)[1:]


def parse_neigh(
    data: bytes, body: int, end: int
) -> tuple[int, int, int, int, bytes | None, bytes | None]:
    """(family, ifindex, state, flags, lladdr, dst) of one neighbour/FDB message body."""
    family, ifindex, state, flags, _type = _NDMSG.unpack_from(data, body)
    lladdr = dst = None
    a = body + _NDMSG.size
    while a + _RTA.size <= end:
        alen, atype = _RTA.unpack_from(data, a)
        if alen < _RTA.size:
            break
        atype &= _NLA_TYPE_MASK
        if atype == _NDA_DST:
            dst = data[a + 4 : a + alen]
        elif atype == _NDA_LLADDR:
            lladdr = data[a + 4 : a + alen]
        a += (alen + 3) & ~3
    return family, ifindex, state, flags, lladdr, dst


@dataclass(frozen=True, slots=True)
class RawLink:
    """What observation reads of one link: ``kind``/``slave_kind`` are ``IFLA_INFO_KIND`` /
    ``IFLA_INFO_SLAVE_KIND`` ("" when absent); ``data``/``slave_data`` the raw attributes of
    ``IFLA_INFO_DATA``/``IFLA_INFO_SLAVE_DATA`` by type (None when absent)."""

    index: int
    flags: int
    name: str
    mtu: int
    mac: str
    master: int
    alias: str | None
    kind: str
    slave_kind: str
    data: dict[int, bytes] | None
    slave_data: dict[int, bytes] | None
    link: int = 0  # IFLA_LINK: a veth's peer's index (in the peer's namespace)
    link_here: bool = True  # no IFLA_LINK_NETNSID: that peer is in this link's namespace


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    a = start
    while a + _RTA.size <= end:
        alen, atype = _RTA.unpack_from(data, a)
        if alen < _RTA.size:
            break
        out[atype & _NLA_TYPE_MASK] = data[a + 4 : a + alen]
        a += (alen + 3) & ~3
    return out


def _text(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw else ""


def parse_link(data: bytes, body: int, end: int) -> RawLink:
    _family, _type, index, flags, _change = IFINFO.unpack_from(data, body)
    attrs = _attrs(data, body + IFINFO.size, end)
    info = attrs.get(_IFLA_LINKINFO)
    nested = _attrs(info, 0, len(info)) if info is not None else {}
    raw_data, raw_slave = nested.get(_INFO_DATA), nested.get(_INFO_SLAVE_DATA)
    mtu, master = attrs.get(_IFLA_MTU), attrs.get(_IFLA_MASTER)
    alias, peer = attrs.get(_IFLA_IFALIAS), attrs.get(_IFLA_LINK)
    return RawLink(
        index=index,
        flags=flags,
        name=_text(attrs.get(_IFLA_IFNAME)),
        mtu=struct.unpack("=I", mtu[:4])[0] if mtu else 0,
        mac=attrs[_IFLA_ADDRESS].hex(":") if attrs.get(_IFLA_ADDRESS) else "",
        master=struct.unpack("=I", master[:4])[0] if master else 0,
        alias=_text(alias) if alias is not None else None,
        kind=_text(nested.get(_INFO_KIND)),
        slave_kind=_text(nested.get(_INFO_SLAVE_KIND)),
        data=_attrs(raw_data, 0, len(raw_data)) if raw_data is not None else None,
        slave_data=_attrs(raw_slave, 0, len(raw_slave)) if raw_slave is not None else None,
        link=struct.unpack("=I", peer[:4])[0] if peer else 0,
        link_here=_IFLA_LINK_NETNSID not in attrs,
    )


def ip_family(ip: str) -> int:
    """``AF_INET6`` for an IPv6 address's text, else ``AF_INET``."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def ip_bytes(ip: str) -> bytes:
    """An IPv4 or IPv6 address's packed bytes (the inverse of ``ip_text``)."""
    return socket.inet_pton(ip_family(ip), ip)


def ip_text(raw: bytes) -> str:
    """An address from its packed bytes (4: IPv4, else IPv6)."""
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def rta(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    return _RTA.pack(_RTA.size + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def entry_request(op: KernelOp, ifindex: int) -> tuple[int, int, bytes]:
    """The rtnetlink request for an FDB/neighbour op (same semantics as ``bridge``/``ip``)."""

    match op:
        case PutFdb():
            nd = _NDMSG.pack(socket.AF_BRIDGE, ifindex, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0)
            body = rta(_NDA_LLADDR, mac_bytes(op.mac)) + rta(_NDA_DST, ip_bytes(op.dst))
            return _RTM_NEWNEIGH, _NLM_F_CREATE | _NLM_F_REPLACE, nd + body
        case AddFlood():
            nd = _NDMSG.pack(socket.AF_BRIDGE, ifindex, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0)
            body = rta(_NDA_LLADDR, mac_bytes(ZERO_MAC)) + rta(_NDA_DST, ip_bytes(op.dst))
            return _RTM_NEWNEIGH, _NLM_F_CREATE | _NLM_F_APPEND, nd + body
        case DelFdb():
            nd = _NDMSG.pack(socket.AF_BRIDGE, ifindex, 0, NTF_SELF, 0)
            body = rta(_NDA_LLADDR, mac_bytes(op.mac)) + rta(_NDA_DST, ip_bytes(op.dst))
            return _RTM_DELNEIGH, 0, nd + body
        case PutPortFdb():
            nd = _NDMSG.pack(socket.AF_BRIDGE, ifindex, NUD_NOARP, NTF_MASTER, 0)
            return (
                _RTM_NEWNEIGH,
                _NLM_F_CREATE | _NLM_F_REPLACE,
                nd + rta(_NDA_LLADDR, mac_bytes(op.mac)),
            )
        case DelPortFdb():
            nd = _NDMSG.pack(socket.AF_BRIDGE, ifindex, 0, NTF_MASTER, 0)
            return _RTM_DELNEIGH, 0, nd + rta(_NDA_LLADDR, mac_bytes(op.mac))
        case PutNeigh():
            nd = _NDMSG.pack(ip_family(op.ip), ifindex, NUD_PERMANENT, 0, 0)
            body = rta(_NDA_DST, ip_bytes(op.ip)) + rta(_NDA_LLADDR, mac_bytes(op.mac))
            return _RTM_NEWNEIGH, _NLM_F_CREATE | _NLM_F_REPLACE, nd + body
        case DelNeigh():
            nd = _NDMSG.pack(ip_family(op.ip), ifindex, 0, 0, 0)
            return _RTM_DELNEIGH, 0, nd + rta(_NDA_DST, ip_bytes(op.ip))
    raise TypeError(f"not an entry op: {op!r}")

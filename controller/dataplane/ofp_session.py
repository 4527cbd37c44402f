"""``FlowSession``: one long-lived OpenFlow 1.4 connection to a bridge, writing atomic bundles.

Why: an incremental pass changes a handful of flows, and starting ``ovs-ofctl`` for them cost
more than everything else the pass did (docs/platform.md O9). The connection goes to the
bridge's ``<bridge>.mgmt`` socket (the one ``ovs-ofctl`` uses; no controller is configured) and
is opened on first use and again after any failure.

A bundle is written so that it is applied whole or not at all:

1. ``OPEN``, one ``ADD_MESSAGE`` per flow mod, then an echo request -- in one write;
2. ovs-vswitchd answers in order, so once the echo reply is in, every error a bundled message
   caused is in too. Any error: the bundle is discarded and ``OpenFlowError`` raised (OVS would
   otherwise commit the messages it did accept);
3. ``COMMIT``; its reply means the switch's tables hold the change (atomically: no packet saw
   half of it).

Not thread-safe (the reconciler's pass is its only user). Every method raises ``OpenFlowError``
on failure; retrying can help when the cause is ovs-vswitchd restarting (the message says which).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterable

from controller.dataplane import ofp_wire as wire
from controller.model.errors import HeddleError
from controller.model.flow import Flow


class FlowSessionError(HeddleError):
    """The connection failed or the switch refused a bundle (the message says which)."""


class _Broken(FlowSessionError):
    """The connection failed (not a refusal by the switch)."""


class FlowSession:
    """See the module docstring. ``path``: the bridge's mgmt socket; ``timeout``: seconds per
    exchange."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._xid = 0x68000000
        self._bundle = 0
        self._decoded: dict[bytes, Flow] = {}
        self.bundles = 0  # committed

    def close(self) -> None:
        """Close the connection (idempotent; the next use opens a new one)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock, self._buf = None, b""

    def _next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFFFFFF
        return self._xid

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
            sock.sendall(wire.hello())
        except OSError as exc:
            sock.close()
            raise FlowSessionError(f"cannot connect to {self.path}: {exc}") from None
        self._sock, self._buf = sock, b""
        try:
            version, mtype, _, _, body = self._read()
            if mtype != wire.HELLO:
                raise FlowSessionError(f"{self.path}: expected hello, got message type {mtype}")
            if not _speaks_14(version, body):
                raise FlowSessionError(
                    f"{self.path}: the bridge does not allow OpenFlow 1.4 (its protocols column)"
                )
        except BaseException:
            self.close()
            raise
        return sock

    def _read(self) -> tuple[int, int, int, int, bytes]:
        """The next message: (version, type, length, xid, body). Answers nothing."""
        assert self._sock is not None
        while True:
            if len(self._buf) >= wire.HEADER.size:
                version, mtype, length, xid = wire.HEADER.unpack_from(self._buf)
                if length < wire.HEADER.size:
                    raise FlowSessionError(f"{self.path}: malformed message (length {length})")
                if len(self._buf) >= length:
                    body = self._buf[wire.HEADER.size : length]
                    self._buf = self._buf[length:]
                    return version, mtype, length, xid, body
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                raise _Broken(f"{self.path}: {exc}") from None
            if not data:
                raise _Broken(f"{self.path}: ovs-vswitchd closed the connection")
            self._buf += data

    def _until(self, xid: int, errors: list[str], track: set[int]) -> tuple[int, bytes]:
        """Read until the reply to ``xid``; errors for any xid in ``track`` are collected."""
        while True:
            _, mtype, _, got, body = self._read()
            if mtype == wire.ECHO_REQUEST:
                self._send(wire.message(wire.ECHO_REPLY, got, body))
                continue
            if mtype == wire.ERROR and (got in track or got == xid):
                errors.append(f"xid {got:#x}: {wire.describe_error(body)}")
                if got == xid:
                    return mtype, body
                continue
            if got == xid:
                return mtype, body
            # anything else (an asynchronous port status, a late reply) is not ours to handle

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise _Broken(f"{self.path}: {exc}") from None

    def dump(self) -> frozenset[Flow]:
        """Every flow carrying our cookie, in every table (one flow-stats request). Entries
        seen in the previous dump are not decoded again (the decode is most of the cost of a
        10,000-flow table). Raises ``FlowSessionError``; ``ValueError`` for a flow outside the
        vocabulary (someone else wrote a flow with our cookie: the caller reads it another
        way)."""
        reused = self._sock is not None
        try:
            entries = self._dump()
        except _Broken:
            self.close()
            if not reused:
                raise
            entries = self._dump()  # a connection that broke since its last use: once more
        except FlowSessionError:
            self.close()
            raise
        seen, fresh = self._decoded, {}
        for entry in entries:
            key = wire.stats_key(entry)
            flow = seen.get(key)
            fresh[key] = flow if flow is not None else wire.decode_flow_stats(entry)
        self._decoded = fresh
        return frozenset(fresh.values())

    def _dump(self) -> list[bytes]:
        self._connect()
        xid = self._next_xid()
        self._send(wire.flow_stats_request(xid))
        entries: list[bytes] = []
        while True:
            errors: list[str] = []
            mtype, body = self._until(xid, errors, set())
            if errors or mtype != wire.MULTIPART_REPLY:
                raise FlowSessionError(f"{self.path}: flow dump refused: {'; '.join(errors)}")
            try:
                entries += wire.flow_stats_entries(body)
            except ValueError as exc:
                raise FlowSessionError(f"{self.path}: {exc}") from None
            if not wire.multipart_more(body):
                return entries

    def replace(self, flows: Iterable[Flow]) -> None:
        """Make ``flows`` the bridge's whole table (every table, whatever the cookie, as
        ``ovs-ofctl replace-flows`` does) in one atomic bundle: a delete of everything, then
        the adds; no packet sees the table in between. Raises as ``modify``."""
        try:
            mods = [wire.flow_delete_all(self._next_xid())]
            mods += [wire.flow_add(f, self._next_xid()) for f in flows]
        except ValueError as exc:  # a planner bug: retrying cannot help
            raise FlowSessionError(f"cannot encode a flow: {exc}") from None
        self._send_bundle(mods)

    def modify(self, add: Iterable[Flow], delete: Iterable[Flow]) -> None:
        """Delete (strict, cookie-scoped) then add, in one atomic bundle; nothing when both
        are empty. Raises ``FlowSessionError``: for a flow outside the encodable vocabulary
        (before anything is sent; retrying cannot help), or when the switch or the connection
        fails (the connection is then closed; nothing of the bundle was applied unless the
        failure came after the commit was sent, which the message says)."""
        try:
            mods = [wire.flow_delete_strict(f, self._next_xid()) for f in delete]
            mods += [wire.flow_add(f, self._next_xid()) for f in add]
        except ValueError as exc:  # a planner bug: retrying cannot help
            raise FlowSessionError(f"cannot encode a flow: {exc}") from None
        if mods:
            self._send_bundle(mods)

    def _send_bundle(self, mods: list[bytes]) -> None:
        reused = self._sock is not None
        try:
            self._bundle_of(mods)
        except _Broken:
            self.close()
            if not reused:
                raise
            # A connection that broke since its last use (ovs-vswitchd restarted): once more
            # on a new one. Safe even if the commit went through: adds replace, strict deletes
            # of absent flows do nothing.
            try:
                self._bundle_of(mods)
            except FlowSessionError:
                self.close()
                raise
        except FlowSessionError:
            self.close()
            raise

    def _bundle_of(self, mods: list[bytes]) -> None:
        self._connect()
        self._bundle = (self._bundle + 1) & 0xFFFFFFFF
        bid = self._bundle
        track = {wire.HEADER.unpack_from(m)[3] for m in mods}
        open_xid, echo_xid = self._next_xid(), self._next_xid()
        track.add(open_xid)
        out = [wire.bundle_control(open_xid, bid, wire.BUNDLE_OPEN)]
        out += [wire.bundle_add(bid, m) for m in mods]
        out.append(wire.message(wire.ECHO_REQUEST, echo_xid))
        self._send(b"".join(out))
        errors: list[str] = []
        self._until(echo_xid, errors, track)
        if errors:
            discard = self._next_xid()
            self._send(wire.bundle_control(discard, bid, wire.BUNDLE_DISCARD))
            self._until(discard, [], set())
            raise FlowSessionError(f"{self.path}: bundle refused, discarded: {'; '.join(errors)}")
        commit = self._next_xid()
        self._send(wire.bundle_control(commit, bid, wire.BUNDLE_COMMIT))
        mtype, body = self._until(commit, errors, set())
        if mtype != wire.BUNDLE_CONTROL or errors:
            raise FlowSessionError(
                f"{self.path}: bundle commit failed, nothing applied: {'; '.join(errors)}"
            )
        kind = struct.unpack_from("!IH", body)[1] if len(body) >= 6 else -1
        if kind != wire.BUNDLE_COMMIT_REPLY:
            raise FlowSessionError(f"{self.path}: unexpected bundle reply {kind}")
        self.bundles += 1


def _speaks_14(version: int, body: bytes) -> bool:
    """Whether the switch's hello allows OpenFlow 1.4: its version bitmap when present,
    else its header version (negotiation picks the lower of the two highest)."""
    off = 0
    while off + 4 <= len(body):
        etype, length = struct.unpack_from("!HH", body, off)
        if length < 4:
            break
        if etype == 1 and length >= 8:
            return bool(struct.unpack_from("!I", body, off + 4)[0] & (1 << wire.VERSION))
        off += (length + 7) // 8 * 8
    return version >= wire.VERSION

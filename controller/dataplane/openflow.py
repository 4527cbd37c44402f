"""OpenFlow tables over a persistent connection per bridge (``ovs-ofctl`` for the rest), and a
watch on ovs-vswitchd's liveness.

Tables are read and written over one long-lived OpenFlow 1.4 connection per bridge
(``dataplane/ofp_session.py``): starting ``ovs-ofctl`` cost more than the small changes of an
incremental pass, and a pass should start no process. ``ovs-ofctl`` remains for what is not on
a pass's path -- the packet counters the metrics read, and a table holding a flow with our
cookie that the codec cannot decode. Every call names the instance explicitly:
``OVS_RUNDIR`` selects the directory of the ``<bridge>.mgmt`` sockets (the machine may run other
OVS instances, docs/platform.md O2), and flows are read and written in OpenFlow 1.4 (bundles
are native there; the canonical text ``plan.flows`` compares against is 1.4's).

* ``dump`` reads only flows with our cookie;
* ``replace`` makes a list the whole table in one bundle: the switch goes from the old table to
  the new one atomically, never through an empty table;
* ``modify`` applies strict, cookie-scoped deletes and adds in one bundle.

``VswitchdWatch`` keeps one OpenFlow connection to a bridge's mgmt socket and calls back when it
breaks (ovs-vswitchd died) and when it comes back (a new ovs-vswitchd, with empty tables), so the
agent re-installs flows at once instead of at the next periodic resync.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from controller.dataplane.ofp_session import FlowSession, FlowSessionError
from controller.model.errors import HeddleError
from controller.model.flow import COOKIE, Flow, parse_flow

log = logging.getLogger("heddle.openflow")

OFCTL = "ovs-ofctl"
PROTOCOL = "OpenFlow14"
DEFAULT_RUNDIR = "/var/run/openvswitch"


class OpenFlowError(HeddleError):
    """``ovs-ofctl`` failed; the message carries its stderr."""


def rundir_of(ovsdb: str) -> str:
    """The run directory that goes with an OVSDB remote: ``unix:<dir>/db.sock`` -> ``<dir>``
    (how ``ovs-ctl`` and the lab lay an instance out); the system default otherwise."""
    if ovsdb.startswith("unix:"):
        return str(Path(ovsdb[len("unix:") :]).parent)
    return DEFAULT_RUNDIR


class OpenFlow:
    """``ovs-ofctl`` against the instance whose mgmt sockets are in ``rundir``. Keeps only a
    parse cache (the last dump per bridge); every method raises ``OpenFlowError`` on failure
    (``timeout`` seconds per call)."""

    def __init__(self, rundir: str, timeout: float = 30.0, cookie: int = COOKIE) -> None:
        self.rundir = rundir
        self.timeout = timeout
        self.cookie = cookie
        self._env = dict(os.environ, OVS_RUNDIR=rundir)
        self._parsed: dict[str, dict[str, Flow]] = {}
        self._sessions: dict[str, FlowSession] = {}

    def close(self) -> None:
        """Close every bridge's connection (idempotent; reopened on use)."""
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()

    def mgmt_socket(self, bridge: str) -> str:
        return os.path.join(self.rundir, f"{bridge}.mgmt")

    def _run(self, args: Sequence[str], stdin: str | None = None) -> str:
        argv = [OFCTL, "-O", PROTOCOL, *args]
        try:
            done = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                env=self._env,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise OpenFlowError(f"{' '.join(argv[:5])}: no answer in {self.timeout}s") from None
        except OSError as exc:
            raise OpenFlowError(f"cannot run {OFCTL}: {exc}") from None
        if done.returncode != 0:
            err = " ".join(done.stderr.split())[:500]
            raise OpenFlowError(f"{OFCTL} {' '.join(args[:3])}: {err or 'failed'}")
        return done.stdout

    def _session(self, bridge: str) -> FlowSession:
        session = self._sessions.get(bridge)
        if session is None:
            session = self._sessions[bridge] = FlowSession(self.mgmt_socket(bridge), self.timeout)
        return session

    def dump(self, bridge: str) -> frozenset[Flow]:
        """Our flows on ``bridge`` (cookie-filtered), as canonical ``Flow``s: one flow-stats
        request over the bridge's connection. A table holding a flow with our cookie that the
        codec cannot decode (someone else wrote it) is read with ``ovs-ofctl`` instead, whose
        text the parser knows more of, so the pass sees it and replaces it."""
        try:
            return self._session(bridge).dump()
        except FlowSessionError as exc:
            raise OpenFlowError(str(exc)) from None
        except ValueError as exc:
            log.warning("a flow with heddle's cookie on %s is not heddle's (%s): read with %s",
                        bridge, exc, OFCTL)  # fmt: skip
            return self.dump_text(bridge)

    def dump_text(self, bridge: str) -> frozenset[Flow]:
        """``dump`` through ``ovs-ofctl dump-flows``.

        Lines seen in the previous dump of the bridge are not parsed again (``--no-stats``
        output is stable while a flow is unchanged)."""
        out = self._run(
            ["--no-names", "dump-flows", "--no-stats", bridge, f"cookie={self.cookie:#x}/-1"]
        )
        seen = self._parsed.get(bridge, {})
        fresh: dict[str, Flow] = {}
        try:
            for line in out.splitlines():
                flow = seen.get(line) or parse_flow(line)
                if flow is not None:
                    fresh[line] = flow
        except ValueError as exc:
            raise OpenFlowError(f"cannot parse the flows of {bridge}: {exc}") from None
        self._parsed[bridge] = fresh
        return frozenset(fresh.values())

    def packets(self, bridge: str, table: int) -> dict[tuple[int, str], int]:
        """Packet counts of our flows in ``table`` of ``bridge``: ``(priority, match text)`` ->
        ``n_packets`` (the match as ``ovs-ofctl`` prints it, ``""`` for match-all)."""
        out = self._run(
            ["--no-names", "dump-flows", bridge, f"table={table},cookie={self.cookie:#x}/-1"]
        )
        counts: dict[tuple[int, str], int] = {}
        for line in out.splitlines():
            # " cookie=0x1, duration=1s, table=0, n_packets=5, n_bytes=9, priority=1,in_port=1
            #  actions=drop": statistics are separated by ", ", the match fields by "," only
            left = line.split(" actions=")[0].strip()
            chunks = left.split(", ")
            stats = dict(c.split("=", 1) for c in chunks[:-1] if "=" in c)
            if "n_packets" not in stats:
                continue
            head = chunks[-1].split(",")
            prio = next((int(h[9:]) for h in head if h.startswith("priority=")), 32768)
            match = ",".join(h for h in head if not h.startswith("priority="))
            counts[prio, match] = int(stats["n_packets"])
        return counts

    def replace(self, bridge: str, flows: Iterable[Flow]) -> None:
        """Make ``flows`` the whole table of ``bridge`` atomically (one bundle over the
        bridge's connection)."""
        try:
            self._session(bridge).replace(flows)
        except FlowSessionError as exc:
            raise OpenFlowError(str(exc)) from None

    def modify(self, bridge: str, add: Iterable[Flow], delete: Iterable[Flow]) -> None:
        """Delete (strict, cookie-scoped) then add, atomically (one bundle over the bridge's
        persistent connection, opened on first use and after a failure)."""
        try:
            self._session(bridge).modify(add, delete)
        except FlowSessionError as exc:
            raise OpenFlowError(str(exc)) from None


# -- liveness watch ----------------------------------------------------------------------------

_OFP_VERSION = 0x05  # OpenFlow 1.4
_OFPT_HELLO, _OFPT_ECHO_REQUEST, _OFPT_ECHO_REPLY = 0, 2, 3
_HEADER = struct.Struct("!BBHI")


class VswitchdWatch:
    """A daemon thread holding an OpenFlow connection to ``<rundir>/<bridge>.mgmt``.

    ``on_change`` is called (from the thread) when a connection is established and when it
    breaks: either is a moment the agent must look at the tables now (a new ovs-vswitchd has
    empty tables). It answers echo requests and ignores every
    other message; it never sends anything that changes the switch. While the socket is absent
    it retries every ``retry`` s, backing off to ``max_retry`` (a connect attempt on a unix
    socket is cheap, and the retry interval is part of the traffic gap after a restart).
    ``stop()`` ends it (idempotent). Why a connection and not polling: a vswitchd that dies
    closes it at once, so detection costs no periodic ``ovs-ofctl`` runs."""

    def __init__(
        self,
        mgmt_socket: str,
        on_change: Callable[[], None],
        retry: float = 0.1,
        max_retry: float = 0.25,
    ) -> None:
        self.path = mgmt_socket
        self._on_change = on_change
        self._retry = retry
        self._max_retry = max_retry
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.connects = 0
        self.disconnects = 0
        self._thread = threading.Thread(target=self._run, name="heddle-ovs-watch", daemon=True)

    def start(self) -> VswitchdWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _notify(self) -> None:
        try:
            self._on_change()
        except Exception:
            log.exception("ovs-vswitchd watch callback failed")

    def _run(self) -> None:
        delay = self._retry
        lost = False
        while not self._stop.is_set():
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(self.path)
            except OSError:
                sock.close()
                self._stop.wait(delay)
                delay = min(delay * 2, self._max_retry)
                continue
            delay = self._retry
            with self._lock:
                self._sock = sock
            self.connects += 1
            if lost:
                log.info("ovs-vswitchd is back on %s", self.path)
            self._notify()  # also the first time: a vswitchd that came up after the agent
            self._serve(sock)
            with self._lock:
                self._sock = None
            sock.close()
            if self._stop.is_set():
                return
            self.disconnects += 1
            lost = True
            log.warning("lost ovs-vswitchd on %s", self.path)
            self._notify()

    def _serve(self, sock: socket.socket) -> None:
        """Say hello, answer echo requests, until EOF or an error."""
        try:
            sock.sendall(_HEADER.pack(_OFP_VERSION, _OFPT_HELLO, _HEADER.size, 1))
            buf = b""
            while not self._stop.is_set():
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
                while len(buf) >= _HEADER.size:
                    version, mtype, length, xid = _HEADER.unpack_from(buf)
                    if length < _HEADER.size:
                        return
                    if len(buf) < length:
                        break
                    body, buf = buf[_HEADER.size : length], buf[length:]
                    if mtype == _OFPT_ECHO_REQUEST:
                        reply = _HEADER.pack(
                            version, _OFPT_ECHO_REPLY, _HEADER.size + len(body), xid
                        )
                        sock.sendall(reply + body)
        except OSError:
            return

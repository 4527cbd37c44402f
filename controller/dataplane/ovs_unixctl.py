"""``Unixctl``: ovs-vswitchd's control socket (what ``ovs-appctl`` talks to), over JSON-RPC.

Why not ``ovs-appctl``: a pass that needs the tunnel-neighbour cache would start a process for
a few hundred bytes. The socket is ``<rundir>/ovs-vswitchd.ctl`` when ovs-vswitchd was started
with that name (the lab does), else ``<rundir>/ovs-vswitchd.<pid>.ctl`` with the pid from
``<rundir>/ovs-vswitchd.pid`` (ovs-ctl's default) -- the lookup ``ovs-appctl -t ovs-vswitchd``
does. The protocol is JSON-RPC 1.0: one object per request (``method``, ``params`` as
strings, ``id``), answered by one object with ``result`` (text) or ``error``.

One connection, opened on first use and again after any failure (ovs-vswitchd restarted: a new
pid, a new socket). Not thread-safe. Every method raises ``UnixctlError``; retrying helps when
ovs-vswitchd is restarting.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket

from controller.model.errors import HeddleError


class UnixctlError(HeddleError):
    """ovs-vswitchd's control socket failed or refused a command (the message says which)."""


def ctl_path(rundir: str) -> str:
    """The control socket of the ovs-vswitchd whose run directory is ``rundir``."""
    named = os.path.join(rundir, "ovs-vswitchd.ctl")
    if os.path.exists(named):
        return named
    try:
        with open(os.path.join(rundir, "ovs-vswitchd.pid")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return named
    return os.path.join(rundir, f"ovs-vswitchd.{pid}.ctl")


class Unixctl:
    """See the module docstring. ``timeout``: seconds per command."""

    def __init__(self, rundir: str, timeout: float = 10.0) -> None:
        self.rundir = rundir
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = ""
        self._ids = itertools.count(1)

    def close(self) -> None:
        """Close the connection (idempotent; the next call opens a new one)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock, self._buf = None, ""

    def call(self, method: str, *params: str) -> str:
        """Run ``method`` with ``params``; its text output. A connection that broke since its
        last use (ovs-vswitchd restarted) is replaced once. Raises ``UnixctlError``."""
        reused = self._sock is not None
        try:
            return self._call(method, params)
        except UnixctlError:
            self.close()
            raise
        except (OSError, ValueError) as exc:
            self.close()
            if reused:
                return self.call(method, *params)
            raise UnixctlError(f"ovs-vswitchd control socket ({method}): {exc}") from None

    def _call(self, method: str, params: tuple[str, ...]) -> str:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(ctl_path(self.rundir))
            except OSError:
                sock.close()
                raise
            self._sock, self._buf = sock, ""
        rid = next(self._ids)
        request = {"id": rid, "method": method, "params": list(params)}
        self._sock.sendall(json.dumps(request).encode())
        decoder = json.JSONDecoder()
        while True:
            text = self._buf.lstrip()
            if text:
                try:
                    reply, end = decoder.raw_decode(text)
                except json.JSONDecodeError:
                    reply, end = None, 0
                if reply is not None:
                    self._buf = text[end:]
                    if not isinstance(reply, dict) or reply.get("id") != rid:
                        continue  # not the answer to this request (a notification)
                    if reply.get("error") is not None:
                        raise UnixctlError(f"{method}: {str(reply['error']).strip()}")
                    return str(reply.get("result") or "")
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionResetError(f"{method}: ovs-vswitchd closed its control socket")
            self._buf += data.decode(errors="replace")


def parse_tunnel_neighbours(text: str, bridge: str) -> dict[str, str]:
    """``tnl/neigh/show`` output -> ``{ip: mac}`` of the entries on ``bridge``. Pure.

    The table (OVS 2.x-3.x): a header line, a rule of ``=``, then ``IP MAC BRIDGE`` per line
    (OVS marks static entries with a fourth column in some versions; it is ignored)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == bridge and parts[1].count(":") == 5:
            out[parts[0]] = parts[1].lower()
    return out

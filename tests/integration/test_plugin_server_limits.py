"""The plugin socket against clients that misbehave: hostile chunk sizes, oversized chunked
bodies, stalled and idle connections, too many connections, clients that hang up early.

A real ``PluginServer`` on a unix socket in a tmp dir, with a one-route table (the limits are
the server's, not a route's); every socket is closed and the server stopped even on failure.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from controller.plugin import responses
from controller.plugin.routes import Route
from controller.plugin.server import MAX_BODY, PluginServer


def _slow(_: Mapping[str, Any]) -> responses.ActivateResponse:
    time.sleep(0.3)
    return responses.ActivateResponse(("NetworkDriver",))


ROUTES = {
    "/Plugin.Activate": Route("Plugin", lambda _: responses.ActivateResponse(("NetworkDriver",))),
    "/Plugin.Slow": Route("Plugin", _slow),
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PluginServer]:
    srv = PluginServer(tmp_path / "p.sock", ROUTES, max_connections=3, idle_timeout=1.0,
                       request_timeout=0.5)  # fmt: skip
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(grace=0.5)


@pytest.fixture
def connect(server: PluginServer) -> Iterator[Any]:
    opened: list[socket.socket] = []

    def _connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5.0)
        s.connect(str(server.path))
        opened.append(s)
        return s

    try:
        yield _connect
    finally:
        for s in opened:
            s.close()


def _read_reply(s: socket.socket) -> bytes:
    """One whole response (head and ``Content-Length`` body); what arrived if the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    want = int(m.group(1)) if m else 0
    while len(body) < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _closed(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        while s.recv(65536):
            pass
        return True
    except (TimeoutError, OSError):
        return False


HEAD = b"POST /Plugin.Activate HTTP/1.1\r\nHost: \r\n"


def test_a_negative_chunk_size_is_refused_without_reading_on(connect: Any) -> None:
    s = connect()
    s.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n" + b"x" * 65536)
    reply = _read_reply(s)
    assert reply.startswith(b"HTTP/1.1 400") and b"chunk-size" in reply
    sent, t0 = 0, time.monotonic()
    with pytest.raises(OSError):  # the server closed: it does not read "to the end"
        while sent < 40 << 20 and time.monotonic() - t0 < 5:
            s.sendall(b"x" * 65536)
            sent += 65536
    assert sent < 8 << 20


def test_a_chunked_body_obeys_the_body_limit(connect: Any) -> None:
    s = connect()
    s.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"y" * 65536)
    reply = b""
    try:
        for _ in range(MAX_BODY // 65536 + 4):
            s.sendall(chunk)
    except OSError:
        pass
    reply = _read_reply(s)
    assert reply.startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: -5\r\n\r\n",
        b"Content-Length: +5\r\n\r\n{}{}{",
        b"Transfer-Encoding: chunked\r\n\r\n0x10\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XYZ\r\n",
    ],
)
def test_malformed_framing_is_400(connect: Any, framing: bytes) -> None:
    s = connect()
    s.sendall(HEAD + framing)
    assert _read_reply(s).startswith(b"HTTP/1.1 400")


def test_a_stalled_request_and_an_idle_connection_are_closed(connect: Any) -> None:
    stalled = connect()
    stalled.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nHost: ")  # head never finished
    idle = connect()
    t0 = time.monotonic()
    assert _closed(stalled, 3.0)
    assert time.monotonic() - t0 < 2.0  # request_timeout 0.5 s
    assert _closed(idle, 3.0)  # idle_timeout 1 s
    # a keep-alive connection that is used is served as before
    s = connect()
    for _ in range(3):
        s.sendall(HEAD + b"Content-Length: 0\r\n\r\n")
        assert _read_reply(s).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)


def test_connections_beyond_the_cap_get_503_and_the_cap_frees_up(connect: Any) -> None:
    held = [connect() for _ in range(3)]
    for s in held:  # make sure all three are being served
        s.sendall(HEAD + b"Content-Length: 0\r\n\r\n")
        assert _read_reply(s).startswith(b"HTTP/1.1 200")
    extra = connect()
    assert _read_reply(extra).startswith(b"HTTP/1.1 503")
    held[0].close()
    deadline = time.monotonic() + 3
    while True:
        s = connect()
        try:  # still at the cap: a 503 and a close, maybe a reset
            s.sendall(HEAD + b"Content-Length: 0\r\n\r\n")
            reply = _read_reply(s)
        except OSError:
            reply = b""
        if reply.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert reply.startswith(b"HTTP/1.1 200")


def test_a_client_that_hangs_up_is_no_traceback(
    connect: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="heddle.plugin.server")
    for _ in range(4):  # one at a time: the fixture's server serves at most 3 connections
        s = connect()
        s.sendall(b"POST /Plugin.Slow HTTP/1.1\r\nHost: \r\nContent-Length: 0\r\n\r\n")
        s.close()  # gone before the answer (the route takes 0.3 s)
        time.sleep(0.5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in capfd.readouterr().err

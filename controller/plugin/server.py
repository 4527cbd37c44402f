"""``PluginServer``: HTTP/1.1 on a unix socket, one thread per connection, keep-alive.

What dockerd does to a plugin: POSTs with no Content-Type and a JSON (or empty) body, on several
keep-alive connections at once, with no request timeout and no idle timeout, and a ``Host``
header that is empty (20.10) or ``plugin.moby.localhost`` (26). So: every request is served on
its connection's thread (``ThreadingMixIn``); answers always carry ``Content-Length``.

Whoever else can open the socket must not be able to hold the agent's memory or threads:

* bodies: ``Content-Length`` or chunked, at most ``MAX_BODY`` bytes either way (413 beyond);
  a chunk size is 1-8 hex digits and nothing else (RFC 9112 ``chunk-size``; ``-1``, ``0x10``,
  ``+5`` or a missing CRLF are 400), so no size can turn a read into "read to the end";
* ``IDLE_TIMEOUT`` between requests on a connection (long: closing a connection dockerd is
  about to reuse could race its next POST, which Go does not retry), ``REQUEST_TIMEOUT`` for
  each read once a request has begun (head and body);
* at most ``MAX_CONNECTIONS`` at once; one more is answered 503 and closed at once;
* a client that goes away is a debug line, never a traceback.

Why the stdlib parser and not a library such as h11: ``http.server`` (maintained with CPython)
already parses the request line and headers with limits (64 KiB per line, 100 headers) and
accepts dockerd's empty ``Host``; the only hand-written HTTP here is the body framing, which is
strict and fuzzed (tests/unit/test_plugin_fuzz.py). A library would replace no more hand code
and add a dependency plus a connection loop of our own.

Lifecycle: ``start()`` creates the parent directory, refuses a socket another live process
serves, replaces a stale one, binds with mode 0660 and serves on a background thread.
``stop()`` stops accepting, removes the socket file (only if it is still ours), lets in-flight
calls finish for up to ``grace`` seconds, then closes every connection so dockerd reconnects to
whatever serves the path next. Both are idempotent.
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import json
import logging
import os
import re
import socket
import socketserver
import stat
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

from controller.model.errors import HeddleError, brief
from controller.plugin.routes import OnCall, Route, dispatch

log = logging.getLogger("heddle.plugin.server")

MAX_BODY = 1 << 20
MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 300.0
REQUEST_TIMEOUT = 10.0
SOCKET_MODE = 0o660
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"


class PluginServerError(HeddleError):
    """The socket could not be served (path taken by a live server or by a non-socket)."""


class MalformedBody(HeddleError):
    """The request body's framing is broken; the connection cannot be reused."""


class BodyTooLarge(HeddleError):
    """The request body is larger than the limit; the connection cannot be reused."""


class Reader(Protocol):
    """The slice of a buffered binary stream the body readers use."""

    def readline(self, size: int, /) -> bytes: ...

    def read(self, size: int, /) -> bytes: ...


def read_chunked(rfile: Reader, limit: int) -> bytes:
    """Read one chunked body from ``rfile``: chunk-size lines of 1-8 hex digits (extensions
    allowed and ignored), each chunk followed by CRLF, a zero chunk, then trailer lines up to an
    empty one. Raises ``BodyTooLarge`` past ``limit`` bytes (summed over chunks, before reading
    them), ``MalformedBody`` for anything else, including a connection that ends early. Never
    reads more than ``limit`` + a few KiB, whatever the peer sends."""
    out = bytearray()
    while True:
        line = rfile.readline(1024)
        m = _CHUNK_SIZE.match(line)
        if m is None:
            raise MalformedBody(f"bad chunk-size line {brief(line)}")
        size = int(m.group(1), 16)
        if size == 0:
            for _ in range(64):  # trailer section, bounded
                trailer = rfile.readline(1024)
                if not trailer.endswith(b"\n"):
                    raise MalformedBody("connection ended in the trailer section")
                if not trailer.strip():
                    return bytes(out)
            raise MalformedBody("too many trailer lines")
        if len(out) + size > limit:
            raise BodyTooLarge(f"body larger than {limit} bytes")
        data = rfile.read(size)
        if len(data) != size:
            raise MalformedBody("connection ended inside a chunk")
        out += data
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise MalformedBody("chunk not followed by CRLF")


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: " + CONTENT_TYPE.encode()
    + b"\r\nConnection: close\r\nContent-Length: 47\r\n\r\n"
    + b'{"Err": "too many connections to the plugin"}\n'
)  # fmt: skip
_CHUNK_SIZE = re.compile(rb"^([0-9A-Fa-f]{1,8})(;[^\r\n]*)?\r?\n$")
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections would block server_close forever

    def __init__(
        self,
        path: str,
        routes: Mapping[str, Route],
        limits: tuple[int, float, float],
        on_call: OnCall | None = None,
    ) -> None:
        self.routes = routes
        self.on_call = on_call
        self.max_connections, self.idle_timeout, self.request_timeout = limits
        self.conn_lock = threading.Lock()
        self.conns: dict[socket.socket, bool] = {}  # connection -> busy serving a request
        self.active = 0  # accepted and not yet closed (counted before the thread starts)
        self.refused = 0
        super().__init__(path, _Handler, bind_and_activate=False)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            full = self.active >= self.max_connections
            if full:
                self.refused += 1
            else:
                self.active += 1
        if not full:
            super().process_request(request, client_address)
            return
        log.warning("plugin: %d connections open; refusing one more", self.max_connections)
        with contextlib.suppress(OSError):
            request.settimeout(0.2)
            request.sendall(_BUSY)
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.conn_lock:
                self.active -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # the client went away or stalled: nothing to report
            log.debug("plugin connection ended: %r", exc)
        else:
            log.exception("plugin connection failed")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.conns[self.connection] = False

    def handle_one_request(self) -> None:
        self.connection.settimeout(self.server.idle_timeout)  # waiting for a request line
        super().handle_one_request()

    def parse_request(self) -> bool:
        self.connection.settimeout(self.server.request_timeout)  # begun: headers and body
        return super().parse_request()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.server.conn_lock:
            self.server.conns.pop(self.connection, None)

    def _busy(self, busy: bool) -> None:
        with self.server.conn_lock:
            if self.connection in self.server.conns:
                self.server.conns[self.connection] = busy

    def do_POST(self) -> None:
        self._busy(True)
        try:
            body = self._body()
            if body is None:
                return
            reply = dispatch(
                self.server.routes, urlsplit(self.path).path, body, self.server.on_call
            )
            self._send(reply.status, reply.body)
        finally:
            self._busy(False)

    def _body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None after answering an error."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked()
        raw = self.headers.get("Content-Length", "0") or "0"
        if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
            self.close_connection = True
            self._send(400, {"Err": f"invalid Content-Length {brief(raw)}"})
            return None
        length = int(raw)
        if length > MAX_BODY:
            self.close_connection = True
            self._send(413, {"Err": f"request body larger than {MAX_BODY} bytes"})
            return None
        return self.rfile.read(length)

    def _chunked(self) -> bytes | None:
        """A chunked body (RFC 9112 §7.1), strictly: see the module docstring."""
        try:
            return read_chunked(self.rfile, MAX_BODY)
        except BodyTooLarge:
            self.close_connection = True
            self._send(413, {"Err": f"request body larger than {MAX_BODY} bytes"})
        except MalformedBody as exc:
            self.close_connection = True
            self._send(400, {"Err": f"malformed chunked body: {exc}"})
        return None

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode() + b"\n"
        try:
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except _GONE as exc:  # the caller hung up before its answer: nothing to tell it
            log.debug("plugin client went away before its answer: %r", exc)
            self.close_connection = True

    def _not_allowed(self) -> None:
        # Any body is left unread: close the connection rather than misparse it.
        self.close_connection = True
        self._send(405, {"Err": f"method {self.command} not allowed: the plugin API uses POST"})

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_allowed

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http: " + format, *args)

    def address_string(self) -> str:
        return "unix"  # a unix-socket peer has no address (the default would raise)


class PluginServer:
    """Serves ``routes`` on the unix socket ``path``; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        routes: Mapping[str, Route],
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        on_call: OnCall | None = None,
    ) -> None:
        self.path = Path(path)
        self._routes = routes
        self._on_call = on_call
        self._limits = (max_connections, idle_timeout, request_timeout)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Bind and serve. Raises ``PluginServerError`` if the path is served by a live
        process or is not a socket; ``OSError`` if it cannot be created."""
        with self._lock:
            if self._server is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._clear_stale()
            server = _Server(str(self.path), self._routes, self._limits, self._on_call)
            try:
                server.server_bind()
                os.chmod(self.path, SOCKET_MODE)
                self._inode = os.stat(self.path).st_ino
                server.server_activate()
            except BaseException:
                server.server_close()
                raise
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="heddle-plugin",
                daemon=True,
            )
            self._thread.start()
            log.info("Docker plugin listening on %s", self.path)

    def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise PluginServerError(f"{self.path} exists and is not a socket; not touching it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # stale: its server is gone
            return
        finally:
            probe.close()
        raise PluginServerError(f"{self.path} is served by another running process")

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving (see the module docstring). Idempotent; never raises."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            if server is None:
                return
            server.shutdown()
            server.server_close()
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                with server.conn_lock:
                    if not any(server.conns.values()):
                        break
                time.sleep(0.01)
            with server.conn_lock:
                conns = list(server.conns)
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            if thread is not None:
                thread.join(timeout=5.0)
            log.info("Docker plugin on %s stopped", self.path)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

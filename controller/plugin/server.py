"""``PluginServer``: HTTP/1.1 on a unix socket, one thread per connection, keep-alive.

What dockerd does to a plugin (shared/notes/docker_plugin.md §4.2) and what this answers:
POSTs with no Content-Type and a JSON (or empty) body, on several keep-alive connections at
once, with no request timeout and no idle timeout. So: every request is served on its
connection's thread (``ThreadingMixIn``); idle connections stay open (closing one could race a
request dockerd is sending, which Go does not retry for a POST); answers always carry
``Content-Length``. Bodies over ``MAX_BODY`` get 413; a non-POST gets 405.

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
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from controller.model.errors import HeddleError
from controller.plugin.routes import Route, dispatch

log = logging.getLogger("heddle.plugin.server")

MAX_BODY = 1 << 20
SOCKET_MODE = 0o660
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"


class PluginServerError(HeddleError):
    """The socket could not be served (path taken by a live server or by a non-socket)."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections would block server_close forever

    def __init__(self, path: str, routes: Mapping[str, Route]) -> None:
        self.routes = routes
        self.conn_lock = threading.Lock()
        self.conns: dict[socket.socket, bool] = {}  # connection -> busy serving a request
        super().__init__(path, _Handler, bind_and_activate=False)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.conns[self.connection] = False

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
            reply = dispatch(self.server.routes, urlsplit(self.path).path, body)
            self._send(reply.status, reply.body)
        finally:
            self._busy(False)

    def _body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None after answering an error."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked()
        raw = self.headers.get("Content-Length", "0") or "0"
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            self.close_connection = True
            self._send(400, {"Err": f"invalid Content-Length {raw!r}"})
            return None
        if length > MAX_BODY:
            self.close_connection = True
            self._send(413, {"Err": f"request body larger than {MAX_BODY} bytes"})
            return None
        return self.rfile.read(length)

    def _chunked(self) -> bytes | None:
        out = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                self._send(400, {"Err": "malformed chunked body"})
                return None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return bytes(out)
            if len(out) + size > MAX_BODY:
                self.close_connection = True
                self._send(413, {"Err": f"request body larger than {MAX_BODY} bytes"})
                return None
            out += self.rfile.read(size)
            self.rfile.readline(1024)  # CRLF after the chunk

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

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

    def __init__(self, path: str | os.PathLike[str], routes: Mapping[str, Route]) -> None:
        self.path = Path(path)
        self._routes = routes
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
            server = _Server(str(self.path), self._routes)
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

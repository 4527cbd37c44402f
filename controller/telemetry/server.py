"""The agent's HTTP endpoint for operators (``--metrics ADDR:PORT``), read-only, GET only:

=============================  =================================================================
``/metrics``                   Prometheus text exposition of ``AgentMetrics``
``/healthz``                   200 alive / 503 not (``Health.live``), reason as text
``/readyz``                    200 ready / 503 not (``Health.ready``), reason as text
``/diag/networks/<name>``      200 ``NetworkFacts`` JSON (``controller.diag.facts``) observed
                               now; 404 if this host has no endpoint in ``<name>``; 503 before
                               the first pass
=============================  =================================================================

Bind it to a management address: it reveals the host's overlay topology to whoever reaches it
(the same trust as a metrics port). Each request runs on its own thread with a 10 s socket
timeout; a diagnostic observation runs on the diagnostic thread's own data-plane handle, never
on the reconciler's (drivers are not thread-safe).
"""

from __future__ import annotations

import http.server
import logging
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.diag.facts import NetworkFacts, encode_facts
from controller.model.errors import HeddleError
from controller.telemetry.health import Health
from controller.telemetry.metrics import AgentMetrics

log = logging.getLogger("heddle.telemetry")
REQUEST_TIMEOUT = 10.0
_DIAG = re.compile(r"^/diag/networks/([a-z0-9][a-z0-9-]{0,62})$")

Diagnose = Callable[[str], NetworkFacts | None]


class NotReady(HeddleError):
    """The agent has no view yet (no pass has run); retrying shortly can help."""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, addr: tuple[str, int], app: TelemetryServer) -> None:
        self.app = app
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(app.metrics.registry), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            probe = app.health.live() if path == "/healthz" else app.health.ready()
            self._send(200 if probe.ok else 503, (probe.reason + "\n").encode())
        elif (m := _DIAG.match(path)) is not None and app.diagnose is not None:
            self._diag(app.diagnose, m.group(1))
        else:
            self._send(404, b"not found: /metrics, /healthz, /readyz, /diag/networks/NAME\n")

    def _diag(self, diagnose: Diagnose, name: str) -> None:
        try:
            facts = diagnose(name)
        except NotReady as exc:
            self._send(503, f"{exc}\n".encode())
            return
        except HeddleError as exc:
            self._send(500, f"cannot observe the data plane: {exc}\n".encode())
            return
        if facts is None:
            self._send(404, f"this host has no endpoint in network {name}\n".encode())
            return
        self._send(200, encode_facts(facts).encode(), "application/json")

    def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class TelemetryServer:
    """Serves metrics, health and diagnostics on ``addr`` until ``stop()``.

    ``start()`` raises ``OSError`` if the address cannot be bound; both are idempotent."""

    def __init__(
        self,
        addr: tuple[str, int],
        metrics: AgentMetrics,
        health: Health,
        diagnose: Diagnose | None = None,
    ) -> None:
        self.addr = addr
        self.metrics = metrics
        self.health = health
        self.diagnose = diagnose
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._server.server_address[1] if self._server is not None else self.addr[1]

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server(self.addr, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="heddle-telemetry", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

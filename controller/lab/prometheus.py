"""A private Prometheus server (Debian's ``prometheus``) that scrapes a lab's agents.

``Prometheus.start(targets, workdir)`` writes ``workdir/prometheus.yml`` (one job ``heddle``,
the given ``ADDR:PORT`` targets, scraped every ``interval`` seconds), starts the server on a
free port of 127.0.0.1 with its data in ``workdir/data`` and waits until it is ready; ``stop``
ends exactly that process (by PID and start time). ``query`` and ``targets`` speak its HTTP API.
The scrape configuration is the one the README shows, with the lab's addresses.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.lab.nsutil import LabError, ProcRef, proc_ref, stop_process

BINARY = "prometheus"


def scrape_config(targets: Sequence[str], interval: float = 15.0) -> str:
    """A ``prometheus.yml`` that scrapes heddle agents at ``targets`` (``ADDR:PORT``). Pure."""
    listed = ", ".join(f'"{t}"' for t in targets)
    return (
        "global:\n"
        f"  scrape_interval: {interval:g}s\n"
        "scrape_configs:\n"
        "  - job_name: heddle\n"
        f"    static_configs:\n      - targets: [{listed}]\n"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """One running server; see the module docstring."""

    def __init__(self, proc: subprocess.Popen[bytes], ref: ProcRef, url: str, log: Path) -> None:
        self._proc = proc
        self.ref = ref
        self.url = url
        self.log = log

    @classmethod
    def start(
        cls, targets: Sequence[str], workdir: Path, interval: float = 1.0, timeout: float = 30.0
    ) -> Prometheus:
        """Start and wait until ready. Raises ``LabError`` if the binary is missing or the
        server does not get ready within ``timeout`` (the process is then stopped)."""
        binary = shutil.which(BINARY)
        if binary is None:
            raise LabError("prometheus is not installed (Debian package `prometheus`)")
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(scrape_config(targets, interval))
        port = _free_port()
        log = workdir / "prometheus.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = cls(proc, proc_ref(proc.pid), f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise LabError(f"prometheus exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(server.url + "/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return server
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise LabError(f"prometheus not ready within {timeout}s: {log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 5 s) this server. Idempotent."""
        stop_process(self.ref)
        self._proc.poll()

    def _api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise LabError(f"prometheus {path}: {body}")
        return body["data"]

    def targets(self) -> list[dict[str, Any]]:
        """The active targets with their ``health`` (``up``/``down``/``unknown``)."""
        return list(self._api("targets")["activeTargets"])

    def query(self, expr: str) -> dict[str, float]:
        """An instant query: ``instance`` label -> value of each series of the result."""
        data = self._api("query", query=expr)
        return {r["metric"].get("instance", ""): float(r["value"][1]) for r in data["result"]}

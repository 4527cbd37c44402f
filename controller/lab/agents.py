"""The lab hosts' agents: their command lines, and starting, stopping and waiting for them.

Each agent runs inside its host's namespace in a session of its own (it outlives the process
that ran ``heddle lab up``), logs to ``<workdir>/<host>.log``, serves heddle-cni at
``cni_socket(host)`` and, unless ``serve_metrics`` is off, metrics on its management address.
It is recorded in the lab's record by ``ProcRef`` and signalled only by that, from any process
(``controller/lab/state.py``). An ovs host's agent is pointed at the host's own OVS instance.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from controller.lab import ovs as lab_ovs
from controller.lab.etcd_http import EtcdHTTP, EtcdHTTPError
from controller.lab.nsutil import (
    LabError,
    child_env,
    child_ref,
    is_running,
    kill_process,
    log_tail,
    popen_in_netns,
    stop_process,
)
from controller.lab.state import LabBook
from controller.lab.wiring import UNDERLAY_DEV

OVS_DATAPATH = "netdev"  # no openvswitch.ko on lab machines (docs/platform.md O3)
AGENT_READY_TIMEOUT = 30.0
METRICS_PORT = 9101  # each agent on its own mgmt0 address


class AgentSite(Protocol):
    """What the agents need of their lab (``controller/lab/topology.py``'s ``Lab``)."""

    workdir: Path
    book: LabBook

    def cli_flags(self, name: str) -> list[str]: ...

    def ovs(self, host: str) -> lab_ovs.OvsInstance: ...

    def etcd_http(self, timeout: float = 2.0) -> EtcdHTTP: ...


class LabAgents:
    """The agents of one lab. ``serve_metrics`` and ``extra_args`` apply to agents (re)started
    from now on (a benchmark comparing with and without turns them off before restarting);
    ``plugin_socket``, when set, makes each agent serve the Docker plugin there instead of
    ``--no-plugin`` (set it before ``up``). Not thread-safe."""

    def __init__(self, site: AgentSite) -> None:
        self._site = site
        self.serve_metrics = True
        self.extra_args: tuple[str, ...] = ()  # e.g. ("--no-filters",)
        self.plugin_socket: Callable[[str], Path] | None = None
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def argv(self, host: str) -> list[str]:
        """The agent's command line."""
        site, h = self._site, self._site.book.record.host(host)
        ovs: list[str] = []
        if h.backend == "ovs":
            ovs = ["--ovsdb", site.ovs(host).db_url, "--ovs-datapath", OVS_DATAPATH,
                   "--underlay-dev", UNDERLAY_DEV]  # fmt: skip
        plugin = (["--no-plugin"] if self.plugin_socket is None
                  else ["--plugin-socket", str(self.plugin_socket(host))])  # fmt: skip
        return [
            sys.executable, "-m", "controller", *site.cli_flags(h.name), "agent",
            "--host", h.name, "--vtep", h.vtep,
            "--backend", h.backend, *ovs, *plugin, "--cni-socket", str(self.cni_socket(host)),
            *(["--metrics", self.metrics_address(host)] if self.serve_metrics else []),
            *site.book.record.agent_args, *self.extra_args,
        ]  # fmt: skip

    def cni_socket(self, host: str) -> Path:
        """Where the agent of ``host`` serves ``heddle-cni`` (a CNI configuration names it)."""
        return self._site.workdir / f"{host}.cni.sock"

    def metrics_address(self, host: str) -> str:
        """Where the agent of ``host`` serves metrics, health and diagnostics: its management
        address (reachable from the root namespace, where Prometheus and the CLI run)."""
        return f"{self._site.book.record.host(host).mgmt_ip}:{METRICS_PORT}"

    def log(self, host: str) -> Path:
        return self._site.workdir / f"{host}.log"

    def running(self, host: str) -> bool:
        ref = self._site.book.record.host(host).agent
        return ref is not None and is_running(ref)

    def start(self, host: str, wait: bool = True) -> int:
        """Start the agent of ``host`` inside its netns (no-op if running); returns its PID.
        With ``wait``, returns after the agent wrote a status record (its first pass)."""
        h = self._site.book.record.host(host)
        if h.agent is not None and is_running(h.agent):
            return h.agent.pid
        since = self._revision_or_zero()
        with open(self.log(host), "ab") as log:
            log.write(f"--- lab: starting agent at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            proc = popen_in_netns(
                h.netns, self.argv(host), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, env=child_env(),
                cwd=self._site.workdir,
            )  # fmt: skip
        self._children[proc.pid] = proc
        self._site.book.set_host(host, agent=child_ref(proc))
        if wait:
            self.wait_ready(host, since_revision=since)
        return proc.pid

    def _revision_or_zero(self) -> int:
        try:
            return self._site.etcd_http().revision()
        except EtcdHTTPError:
            return 0

    def wait_ready(
        self, host: str, timeout: float = AGENT_READY_TIMEOUT, since_revision: int = 0
    ) -> dict[str, Any]:
        """Wait until ``host``'s agent wrote its status after ``since_revision``; return it.
        Raises ``LabError`` (with the log's tail) if it exits or writes none in ``timeout``."""
        ref = self._site.book.record.host(host).agent
        deadline = time.monotonic() + timeout
        probe = self._site.etcd_http()
        while True:
            if ref is None or not is_running(ref):
                raise LabError(f"agent {host} is not running:\n{log_tail(self.log(host))}")
            with contextlib.suppress(EtcdHTTPError):
                got = probe.status_of(host)
                if got is not None and got[1] > since_revision:
                    return got[0]
            if time.monotonic() > deadline:
                raise LabError(
                    f"agent {host} wrote no status within {timeout}s:\n{log_tail(self.log(host))}"
                )
            time.sleep(0.05)

    def kill(self, host: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the agent of ``host`` by its recorded PID; wait for it to exit."""
        ref = self._site.book.record.host(host).agent
        kill_process(ref, sig)
        self.reap()
        if ref is not None and not is_running(ref):
            self._site.book.set_host(host, agent=None)

    def stop(self, host: str) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        stop_process(self._site.book.record.host(host).agent)
        self.reap()
        self._site.book.set_host(host, agent=None)

    def restart(self, host: str, wait: bool = True) -> int:
        self.stop(host)
        return self.start(host, wait=wait)

    def reap(self) -> None:
        """Collect the exit status of every agent this object started that has exited."""
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

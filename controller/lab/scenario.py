"""Desired-state scenarios on a lab: endpoints in their own namespaces, convergence, cleanup.

Shared by the e2e tests, the demo-like benchmarks and anyone scripting a lab. ``Scenario``
remembers everything it created and ``cleanup`` removes it (networks with ``force``, then the
endpoint namespaces), so a test or benchmark never leaves objects for the next one.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from controller.desired import DesiredState
from controller.lab.nsutil import child_env
from controller.lab.pinger import PingResult, parse_result
from controller.lab.probes import owned_links, wait_status
from controller.lab.topology import Lab
from controller.model.errors import NotFound
from controller.reconcile.loop import PASS_LINE


@dataclass(frozen=True, slots=True)
class Placed:
    """An endpoint created by a scenario: where it lives and how to reach it."""

    network: str
    id: str
    host: str
    netns: str
    ip: str
    mac: str
    ip6: str | None = None


@dataclass
class Scenario:
    """Creates networks and endpoints (each endpoint in its own namespace) and removes them.

    ``converge`` waits until every agent has passed the revision of the newest endpoint record,
    so a caller never races the reconciler. Not thread-safe.
    """

    lab: Lab
    desired: DesiredState
    networks: list[str] = field(default_factory=list)
    placed: list[Placed] = field(default_factory=list)

    def network(
        self,
        name: str,
        subnet: str | None,
        vni: int | None = None,
        egress: str | None = None,
        subnet6: str | None = None,
    ) -> None:
        self.desired.create_network(name, subnet, vni=vni, egress=egress, subnet6=subnet6)
        self.networks.append(name)

    def endpoint(
        self, network: str, host: str, name: str, ip: str | None = None, ip6: str | None = None
    ) -> Placed:
        """Create namespace ``<prefix>-<name>`` and the endpoint ``name`` of ``network`` in it
        (``ip``/``ip6``: the addresses to take, else the lowest free)."""
        ns = self.lab.add_netns(name)
        ep = self.desired.create_endpoint(network, host, netns=ns, ip=ip, endpoint_id=name, ip6=ip6)
        p = Placed(network, ep.id, host, ns, ep.address, ep.mac, ep.ip6)
        self.placed.append(p)
        return p

    def remove(self, p: Placed) -> None:
        """Remove the endpoint from the desired state (its namespace stays until cleanup)."""
        self.desired.remove_endpoint(p.network, p.id)

    def converge(self, timeout: float = 30.0) -> None:
        probe = self.lab.etcd_http()
        wait_status(probe, [h.name for h in self.lab.hosts], timeout=timeout)

    def cleanup(self) -> None:
        for name in self.networks:
            with contextlib.suppress(NotFound):
                self.desired.remove_network(name, force=True)
        for p in self.placed:
            self.lab.remove_netns(p.netns)
        self.networks.clear()
        self.placed.clear()


def wait_no_owned_links(lab: Lab, timeout: float = 15.0) -> dict[str, list[str]]:
    """Wait until no host has a heddle-owned link; return what is left per host (empty = ok)."""
    deadline = time.monotonic() + timeout
    while True:
        left = {h.name: [ln.name for ln in owned_links(h.netns)] for h in lab.hosts}
        left = {k: v for k, v in left.items() if v}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@contextlib.contextmanager
def continuous_ping(
    lab: Lab, src: Placed, dst: Placed, duration: float, interval: float = 0.005
) -> Iterator[list[PingResult]]:
    """Ping ``dst`` from ``src`` in another process (its own GIL: the test driver's work never
    delays a probe) for ``duration`` s; the list holds the result after the block. The ping is
    running when the block starts; ``down`` stops the process if the caller dies."""
    argv = [sys.executable, "-m", "controller.lab.pinger", dst.ip, "--duration", str(duration),
            "--interval", str(interval), "--wait", "2"]  # fmt: skip
    proc = lab.popen(
        src.netns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env()
    )
    out: list[PingResult] = []
    try:
        time.sleep(0.5)  # interpreter start-up; the ping is running from here on
        yield out
        stdout, stderr = proc.communicate(timeout=duration + 30)
        assert stdout, f"pinger produced no result (exit {proc.returncode}): {stderr.decode()}"
        out.append(parse_result(stdout.decode()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def first_pass_changes(lab: Lab, host: str) -> int:
    """``changes=N`` of the first pass logged after the lab's last start marker for ``host``
    (what a restarted agent had to change: 0 when it adopted everything as it found it)."""
    text = lab.agents.log(host).read_text(errors="replace")
    tail = text.rsplit("--- lab: starting agent", 1)[-1]
    m = PASS_LINE.search(tail)
    assert m, f"no pass logged by the restarted agent {host}:\n{tail[-2000:]}"
    return int(m["changes"])

"""Observability on the 3-host lab, kernel and ovs: a real Prometheus scrapes every agent,
``heddle status`` says when something is wrong, and ``heddle trace`` names the hop that was
broken on purpose (an FDB entry or flow deleted, a veth set down, a wrong MTU, an address
removed, the destination agent stopped).

Agents resync only every 60 s here, so a broken hop stays broken while the trace runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.lab.nsutil import child_env, run_in_netns, send_signal
from controller.lab.prometheus import Prometheus
from controller.lab.scenario import Placed, Scenario
from controller.lab.topology import Lab
from controller.model.naming import veth_host_name
from controller.plan.ovsdb import DEFAULT_BRIDGE

LAB_BACKENDS = ("kernel", "ovs")
LAB_NETS = {
    "kernel": ("hte", "172.31.222.0/24", "172.31.221.0/24"),
    "ovs": ("htv", "172.31.220.0/24", "172.31.219.0/24"),
}
LAB_RESYNC_INTERVAL = 60.0
# The trace tests break the data plane on purpose and look at it before the agent repairs it.
LAB_AGENT_ARGS = ("--drift-repair", "resync")


def heddle(lab: Lab, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", "--etcd", lab.etcd_url, *argv],
        capture_output=True, text=True, timeout=60, env=child_env(),
    )  # fmt: skip


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def ip(lab: Lab, netns: str, *args: str) -> None:
    res = run_in_netns(netns, ["ip", *args])
    assert res.returncode == 0, res.stderr


# -- Prometheus -------------------------------------------------------------------------------


def test_a_real_prometheus_scrapes_every_agent(lab: Lab, overlay: Scenario, tmp_path: Path) -> None:
    targets = [lab.agents.metrics_address(h.name) for h in lab.hosts]
    prom = Prometheus.start(targets, tmp_path / "prometheus", interval=1.0)
    try:
        wait_for(
            "every target up",
            lambda: sorted(t["health"] for t in prom.targets()) == ["up"] * len(targets),
        )
        wait_for(
            "pass durations of every agent",
            lambda: (
                set(prom.query('heddle_pass_duration_seconds_count{kind="full"}')) == set(targets)
            ),
        )
        h1 = lab.agents.metrics_address("h1")
        changes = 'sum by (instance) (heddle_changes_total{job="heddle"})'
        before = prom.query(changes).get(h1, 0.0)
        overlay.network("prom", "10.93.0.0/24")
        overlay.endpoint("prom", "h1", "pa")
        overlay.endpoint("prom", "h2", "pb")
        overlay.converge()
        wait_for("h1's changes counter to grow", lambda: prom.query(changes).get(h1, 0.0) > before)
        up = prom.query("heddle_local_endpoints")
        assert up[h1] >= 1
    finally:
        prom.stop()


def test_health_endpoints_answer_on_every_agent(lab: Lab) -> None:
    import urllib.request

    for h in lab.hosts:
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(f"http://{lab.agents.metrics_address(h.name)}{path}") as r:
                assert r.status == 200, (h.name, path)


def test_sigusr1_writes_every_threads_stack_and_the_agent_goes_on(lab: Lab) -> None:
    """What an operator sends a stuck agent: the stacks land in its log (the journal under
    systemd) and the agent keeps running and answering."""
    import urllib.request

    ref = lab.host("h1").agent
    assert ref is not None
    log = lab.agents.log("h1")
    mark = len(log.read_bytes())
    # every thread: the reconciler's, membership's keepalive, the main thread waiting to stop
    wheres = (b"reconcile/loop.py", b"controller/membership.py", b"controller/cli/agent.py")
    assert send_signal(ref, signal.SIGUSR1)
    try:  # the dump is written thread by thread: wait for all of it, not its first thread
        wait_for("every thread's stack in the log",
                 lambda: all(w in log.read_bytes()[mark:] for w in wheres), 5.0)  # fmt: skip
    except AssertionError:
        dump = log.read_bytes()[mark:].decode(errors="replace")
        raise AssertionError(f"not every thread's stack is in the log:\n{dump[-3000:]}") from None
    assert lab.agents.running("h1")
    with urllib.request.urlopen(f"http://{lab.agents.metrics_address('h1')}/healthz") as r:
        assert r.status == 200


# -- heddle status ----------------------------------------------------------------------------


def test_status_is_healthy_then_names_what_is_not(lab: Lab, overlay: Scenario) -> None:
    overlay.network("st", "10.94.0.0/24")
    overlay.endpoint("st", "h1", "sa")
    overlay.converge()
    res = heddle(lab, "status")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "healthy" in res.stdout and "st " in res.stdout
    report = json.loads(heddle(lab, "status", "-o", "json").stdout)
    assert report["healthy"] is True and len(report["hosts"]) == 3
    assert {n["name"]: n["endpoints"] for n in report["networks"]}["st"] == {"h1": 1}

    probe = lab.etcd_http()
    probe.put("/heddle/v1/endpoints/st/bad", "{not json")
    try:
        res = heddle(lab, "status")
        assert res.returncode == 1
        assert "skipped" in res.stdout and "endpoints/st/bad" in res.stdout
    finally:
        probe.delete("/heddle/v1/endpoints/st/bad")

    lab.agents.stop("h3")
    try:
        # at once when the agent revoked its lease on the way out; within the lease's 10 s
        # when it could not (SIGKILL after the lab's 5 s grace)
        def h3_reported() -> bool:
            res = heddle(lab, "status", "-o", "json")
            problems = json.loads(res.stdout)["problems"]
            return res.returncode == 1 and any(p.startswith("host h3: not alive") for p in problems)

        wait_for("h3 reported not alive", h3_reported, timeout=15.0)
    finally:
        lab.agents.start("h3")
    assert heddle(lab, "status").returncode == 0


# -- heddle trace -----------------------------------------------------------------------------


@pytest.fixture
def pair(lab: Lab, overlay: Scenario) -> Iterator[tuple[Placed, Placed]]:
    """A network with endpoint ``ta`` on h1 and ``tb`` on h2, converged, the path whole."""
    overlay.network("tr", "10.95.0.0/24")
    a = overlay.endpoint("tr", "h1", "ta")
    b = overlay.endpoint("tr", "h2", "tb")
    overlay.converge()
    yield a, b


def trace(lab: Lab, src: str, dst: str) -> tuple[int, dict[str, object]]:
    res = heddle(lab, "trace", "tr", src, dst, "-o", "json")
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout)


def test_trace_of_a_whole_path(lab: Lab, pair: tuple[Placed, Placed]) -> None:
    a, b = pair
    rc, report = trace(lab, a.id, b.ip)
    assert rc == 0 and report["whole"] is True, report
    names = [h["name"] for h in report["hops"]]  # type: ignore[attr-defined]
    assert names[0] == "source host" and names[-1] == "destination address"
    assert "forwarding entry" in names and "destination accepts VNI" in names
    rc, report = trace(lab, a.ip, b.ip)  # FROM as an address
    assert rc == 0


def test_trace_names_a_deleted_forwarding_entry(lab: Lab, pair: tuple[Placed, Placed]) -> None:
    a, b = pair
    h1 = lab.host("h1")
    if h1.backend == "ovs":
        vni = json.loads(heddle(lab, "network", "show", "tr", "-o", "json").stdout)["vni"]
        lab.ovs("h1").ofctl("del-flows", DEFAULT_BRIDGE, f"table=20,reg6={vni},dl_dst={b.mac}")
    else:
        vx = next(n for n in _links(h1.netns) if n.startswith("hdx"))
        ip(lab, h1.netns, "neigh", "del", b.ip, "dev", vx)
        res = run_in_netns(h1.netns, ["bridge", "fdb", "del", b.mac, "dev", vx, "dst",
                                      lab.host("h2").vtep])  # fmt: skip
        assert res.returncode == 0, res.stderr
    rc, report = trace(lab, a.id, b.ip)
    assert rc == 1 and report["first_bad"] == "forwarding entry", report


def test_trace_names_a_veth_set_down(lab: Lab, pair: tuple[Placed, Placed]) -> None:
    a, b = pair
    ip(lab, lab.host("h2").netns, "link", "set", veth_host_name("tr", b.id), "down")
    rc, report = trace(lab, a.id, b.ip)
    assert rc == 1 and report["first_bad"] == "destination veth", report
    rc, report = trace(lab, b.id, a.ip)
    assert rc == 1 and report["first_bad"] == "source veth", report


def test_trace_names_a_wrong_mtu(lab: Lab, pair: tuple[Placed, Placed]) -> None:
    a, b = pair
    ip(lab, a.netns, "link", "set", "eth0", "mtu", "1300")
    rc, report = trace(lab, a.id, b.ip)
    assert rc == 1 and report["first_bad"] == "source address", report
    assert "MTU" in str(report["hops"])


def test_trace_names_a_removed_address(lab: Lab, pair: tuple[Placed, Placed]) -> None:
    a, b = pair
    ip(lab, b.netns, "addr", "flush", "dev", "eth0")
    rc, report = trace(lab, a.id, b.ip)
    assert rc == 1 and report["first_bad"] == "destination address", report


def test_trace_names_a_stopped_destination_agent(lab: Lab, pair: tuple[Placed, Placed]) -> None:
    a, b = pair
    lab.agents.stop("h2")
    try:
        ip(lab, b.netns, "addr", "flush", "dev", "eth0")
        rc, report = trace(lab, a.id, b.ip)
        assert rc == 1 and report["first_bad"] == "destination VTEP", report
        bad = next(h for h in report["hops"] if h["name"] == "destination VTEP")  # type: ignore[attr-defined]
        assert "not alive" in bad["evidence"]
    finally:
        lab.agents.start("h2")
    lab.agents.wait_ready("h2")


def _links(netns: str) -> list[str]:
    res = run_in_netns(netns, ["ip", "-o", "link", "show"])
    return [line.split(":")[1].strip().split("@")[0] for line in res.stdout.splitlines()]

"""End-to-end, Open vSwitch only: what the ovs backend promises beyond the shared suite.

``test_lab.py`` runs the whole backend-neutral suite on ovs too (cross-host ping, isolation,
underlay carries only VXLAN unicast -- so no ARP crosses it --, restarts, etcd outage, drift,
MTU). This module adds, on a 3-host ovs lab (userspace ``netdev`` datapath, one private OVS per
host):

* agent restarts adopt OVSDB rows and flows: no packet lost, the first pass changes nothing,
  and no interface row or flow is re-created;
* an ovs-vswitchd restart (crash and clean stop): the agent's watch re-installs the flows at once
  (the lab's periodic resync is 30 s here, so it cannot be what repairs them); the traffic gap
  is measured and printed; the member VTEPs are resolved again before any flow tunnels to them,
  so a one-shot ping to a host the restarted one has not talked to since crosses at once;
* ``down`` removes every trace of an ovs lab after an ``up`` that failed or was SIGKILLed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.lab.nsutil import LabError, child_env
from controller.lab.pinger import ping
from controller.lab.probes import (
    leftovers,
    ovs_flow_ages,
    ovs_flows,
    ovs_owned_interfaces,
    wait_ping,
)
from controller.lab.scenario import Scenario, continuous_ping, first_pass_changes
from controller.lab.topology import Lab

LAB_BACKENDS = ("ovs",)
LAB_NETS = {"ovs": ("hlv", "172.31.230.0/24", "172.31.229.0/24")}
LAB_RESYNC_INTERVAL = 30.0
INTERVAL = 0.005


def test_agent_restarts_adopt_ports_and_flows(lab: Lab, overlay: Scenario) -> None:
    """A clean stop (SIGTERM) and a crash (SIGKILL) of agents on both ends of a ping: no loss,
    the first pass changes nothing, the OVSDB rows and the flows are the ones from before."""
    overlay.network("adopt", "10.31.0.0/24", vni=5102)
    a = overlay.endpoint("adopt", "h1", "ad1")
    b = overlay.endpoint("adopt", "h2", "ad2")
    overlay.endpoint("adopt", "h3", "ad3")
    overlay.converge()
    assert wait_ping(a.netns, b.ip, timeout=10.0)
    hosts = ("h1", "h2")
    rows = {h: ovs_owned_interfaces(lab.ovs(h)) for h in hosts}
    ages = {h: ovs_flow_ages(lab.ovs(h)) for h in hosts}
    t0 = time.monotonic()
    with continuous_ping(lab, a, b, duration=6.0, interval=INTERVAL) as result:
        lab.agents.restart("h1", wait=True)
        assert first_pass_changes(lab, "h1") == 0, "h1 changed things after a clean restart"
        lab.agents.kill("h2", signal.SIGKILL)
        lab.agents.start("h2", wait=True)
        assert first_pass_changes(lab, "h2") == 0, "h2 changed things after a crash"
    res = result[0]
    print(f"ping across a SIGTERM and a SIGKILL agent restart (ovs): {res.summary()}")
    assert res.sent >= 600 and res.loss == 0 and res.errors == 0, res.summary()
    elapsed = time.monotonic() - t0
    for h in hosts:
        assert ovs_owned_interfaces(lab.ovs(h)) == rows[h], f"{h}: OVSDB rows were re-created"
        now = ovs_flow_ages(lab.ovs(h))
        assert now.keys() == ages[h].keys(), f"{h}: the flow table changed"
        young = [f for f, age in now.items() if age < ages[h][f] + elapsed - 1.0]
        assert not young, f"{h}: flows re-installed: {young[:3]}"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["crash", "stop"])
def test_vswitchd_restart_flows_are_back_at_once(
    lab: Lab, overlay: Scenario, sig: signal.Signals
) -> None:
    overlay.network("vsw", "10.32.0.0/24", vni=5103)
    a = overlay.endpoint("vsw", "h1", "vs1")
    b = overlay.endpoint("vsw", "h2", "vs2")
    c = overlay.endpoint("vsw", "h3", "vs3")
    overlay.converge()
    assert wait_ping(a.netns, b.ip, timeout=10.0)
    inst = lab.ovs("h2")
    table = set(ovs_flows(inst))
    log_mark = len(lab.agents.log("h2").read_bytes())
    with continuous_ping(lab, a, b, duration=4.0, interval=INTERVAL) as result:
        t0 = time.monotonic()
        inst.restart_vswitchd(sig)
        t_up = time.monotonic()
        while set(ovs_flows(inst)) != table:
            assert time.monotonic() - t_up < 10.0, "flows not re-installed within 10 s"
            time.sleep(0.01)
        t_flows = time.monotonic()
    res = result[0]
    gap = res.longest_loss_run * INTERVAL
    print(
        f"ovs-vswitchd {sig.name} restart: vswitchd back after {t_up - t0:.3f} s, flows "
        f"{t_flows - t_up:.3f} s later; traffic gap {gap:.3f} s ({res.loss} lost, "
        f"{res.summary()})"
    )
    assert res.errors == 0, res.summary()
    assert res.lost == () or res.lost[-1] < res.sent - 200, "traffic did not come back"
    assert gap < 2.0, f"gap {gap:.3f} s: not 'at once' (the resync is {LAB_RESYNC_INTERVAL} s)"
    tail = lab.agents.log("h2").read_bytes()[log_mark:].decode(errors="replace")
    assert "ovs-vswitchd is back" in tail, tail[-2000:]
    # The new ovs-vswitchd started with an empty tunnel-neighbour cache, and nothing has gone
    # from h2 to h3 since: the agent resolved h3's VTEP before its flows tunnelled there, so
    # the very first packet crosses (OVS alone drops it while it sends its own ARP).
    first = ping(b.netns, c.ip, count=1, wait=2.0)
    assert first.ok, f"the first packet h2 -> h3 after the restart was lost: {first.summary()}"
    assert ping(a.netns, b.ip, count=3).ok


def _ovs_lab(workdir: Path) -> Lab:
    return Lab(workdir, prefix="hlk", mgmt_subnet="172.31.240.0/24",
               underlay_subnet="172.31.239.0/24")  # fmt: skip


def test_down_after_a_failed_up_leaves_nothing(tmp_path: Path) -> None:
    """``up`` fails after both OVS instances run (the agents reject their flags): ``up``
    itself tears everything down."""
    lab = _ovs_lab(tmp_path / "lab")
    with pytest.raises(LabError, match="agent h1 is not running"):
        lab.up(hosts=2, backend="ovs", agent_args=("--no-such-flag",))
    assert not leftovers("hlk", tmp_path / "lab")


def test_down_after_a_killed_up_leaves_nothing(tmp_path: Path) -> None:
    """The process running ``up`` is SIGKILLed while the second host's OVS starts; a later
    ``down`` (another process, from the record alone) removes everything."""
    workdir = tmp_path / "lab"
    code = (
        "import sys; from pathlib import Path; from controller.lab.topology import Lab; "
        "Lab(Path(sys.argv[1]), prefix='hlk', mgmt_subnet='172.31.240.0/24', "
        "underlay_subnet='172.31.239.0/24').up(hosts=3, backend='ovs')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(workdir)], env=child_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30.0
        while not (workdir / "ovs-h2" / "ovsdb-server.pid").exists():
            if proc.poll() is not None:
                assert proc.stderr is not None
                pytest.fail(f"up ended before the kill: {proc.stderr.read().decode()[-1500:]}")
            assert time.monotonic() < deadline, "the second OVS instance never started"
            time.sleep(0.005)
        proc.kill()
        proc.wait()
        assert leftovers("hlk", workdir), "nothing to clean up: the kill came too late"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _ovs_lab(workdir).down()
    left = leftovers("hlk", workdir)
    assert not left, left

"""Per-host identities on a secure lab (``heddle lab up --secure``): etcd with TLS client
certificates and authentication, each agent running as its own host, the CLI as the operator.

An agent works under its identity (registers, publishes status, carries traffic); a host's
identity is refused another host's status, host and alive keys and the networks; an agent whose
host record the operator rewrote puts it back and reports it (status notice, metric)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from controller.cli.parser import REFUSED
from controller.lab.probes import agent_metric, wait_ping
from controller.lab.scenario import Scenario
from controller.lab.topology import Lab
from controller.model import codec
from controller.model.errors import StoreRefused
from controller.model.records import Host
from controller.store import keys
from controller.store.kv import Put, Txn

LAB_BACKENDS = ("kernel",)
LAB_NETS = {"kernel": ("hid", "172.31.210.0/24", "172.31.209.0/24")}
LAB_SECURE = True


def heddle(lab: Lab, identity: str | None, *argv: str) -> subprocess.CompletedProcess[str]:
    flags = lab.cli_flags() if identity is None else lab.cli_flags(identity)
    return subprocess.run(
        [sys.executable, "-m", "controller", *flags, *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_agents_work_under_their_own_identities(lab: Lab, overlay: Scenario) -> None:
    assert lab.etcd_url.startswith("https://")
    assert "--cert" in lab.agents.argv("h1")
    overlay.network("id", "10.36.0.0/24")
    a = overlay.endpoint("id", "h1", "id1")
    b = overlay.endpoint("id", "h3", "id3")
    overlay.converge()
    assert wait_ping(a.netns, b.ip, timeout=10.0)
    probe = lab.etcd_http()
    for h in lab.hosts:
        got = probe.status_of(h.name)
        assert got is not None and got[0]["ok"] is True, (h.name, got)
    st = heddle(lab, None, "-o", "json", "status")
    assert st.returncode == 0, st.stdout + st.stderr


@pytest.mark.parametrize(
    "key",
    [keys.status("h2"), keys.host("h2"), keys.alive("h2"), keys.network("id-forged"),
     keys.ROOT + "docker/h2/networks/x"],
)  # fmt: skip
def test_a_host_is_refused_another_hosts_records(lab: Lab, key: str) -> None:
    with lab.kv("h1") as h1:
        before = h1.get(key)
        with pytest.raises(StoreRefused):
            h1.commit(Txn(success=(Put(key, b'{"forged": true}'),)))
        after = h1.get(key)
        assert (before is None and after is None) or (
            before is not None and after is not None and after.value == before.value
        )
    cli = heddle(lab, "h1", "network", "create", "id-forged", "--subnet", "10.37.0.0/24")
    assert cli.returncode == REFUSED and "etcd refused" in cli.stderr, cli.stderr


def _restored_metric(lab: Lab, host: str) -> float:
    value = agent_metric(lab.agents.metrics_address(host), "heddle_host_record_restored_total")
    assert value is not None, "no heddle_host_record_restored_total"
    return value


def test_an_agent_puts_its_own_host_record_back(lab: Lab, overlay: Scenario) -> None:
    overlay.network("hr", "10.38.0.0/24")
    a = overlay.endpoint("hr", "h1", "hr1")
    b = overlay.endpoint("hr", "h2", "hr2")
    overlay.converge()
    assert wait_ping(a.netns, b.ip, timeout=10.0)
    h2 = lab.host("h2")
    before = _restored_metric(lab, "h2")
    forged = codec.encode_host(Host("h2", "172.31.209.250", 1500, "kernel")).encode()
    with lab.kv() as operator:  # only the operator may still do this
        operator.commit(Txn(success=(Put(keys.host("h2"), forged),)))
        deadline = time.monotonic() + 10.0
        while True:
            got = operator.get(keys.host("h2"))
            assert got is not None
            if codec.decode_host(got.value).vtep == h2.vtep:
                break
            assert time.monotonic() < deadline, "h2 did not put its host record back"
            time.sleep(0.1)
    assert _restored_metric(lab, "h2") == before + 1
    assert wait_ping(a.netns, b.ip, timeout=10.0)
    deadline = time.monotonic() + 10.0
    while True:
        st = heddle(lab, None, "-o", "json", "status")
        report = json.loads(st.stdout)
        notices = next(h["notices"] for h in report["hosts"] if h["name"] == "h2")
        if notices:
            break
        assert time.monotonic() < deadline, st.stdout
        time.sleep(0.5)
    assert "host record restored" in notices[0] and "172.31.209.250" in notices[0]

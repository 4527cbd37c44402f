"""Podman on heddle networks: Debian's Podman with the CNI backend, one private Podman per lab
host (``controller/lab/podman.py``), ``podman run --network <heddle network>`` through
``heddle-cni`` -- as a user of ``heddle lab up --podman`` meets it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.cni.service import endpoint_id_for
from controller.desired import DesiredState
from controller.lab.nsutil import run_in_netns
from controller.lab.podman import IMAGE, PodmanLab
from controller.lab.scenario import Placed, continuous_ping, first_pass_changes
from controller.lab.topology import Lab
from controller.model.naming import veth_host_name
from controller.store import keys

LAB_NETS = {"kernel": ("hpd", "172.31.202.0/24", "172.31.201.0/24")}
pytestmark = pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")


@dataclass(frozen=True)
class Container:
    host: str
    name: str
    network: str
    id: str
    ip: str
    sandbox: str

    def placed(self) -> Placed:
        return Placed(self.network, self.name, self.host, Path(self.sandbox).name, self.ip, "")


class Pods:
    """The lab's Podmans, with the containers a test started (removed afterwards)."""

    def __init__(self, lab: Lab, podman: PodmanLab) -> None:
        self.lab, self.podman = lab, podman
        self.started: list[tuple[str, str]] = []

    def sync(self) -> None:
        for h in self.lab.hosts:
            self.podman.sync_networks(h.name)

    def run(self, host: str, name: str, network: str) -> Container:
        self.started.append((host, name))
        self.podman.podman(host, ["run", "-d", "--name", name, "--network", network, IMAGE,
                                  "sleep", "3600"])  # fmt: skip
        return self.inspect(host, name, network)

    def inspect(self, host: str, name: str, network: str) -> Container:
        out = self.podman.podman(host, ["inspect", name]).stdout
        info = json.loads(out)[0]
        nets = info["NetworkSettings"]["Networks"]
        return Container(host, name, network, info["Id"], nets[network]["IPAddress"],
                         info["NetworkSettings"]["SandboxKey"])  # fmt: skip

    def ping(self, c: Container, ip: str, count: int = 2) -> bool:
        done = self.podman.podman(
            c.host, ["exec", c.name, "ping", "-c", str(count), "-W", "2", ip], check=False
        )
        return done.returncode == 0

    def rm(self, host: str, name: str) -> None:
        self.podman.podman(host, ["rm", "-f", "-t", "0", name], check=False)

    def cleanup(self) -> None:
        for host, name in self.started:
            self.rm(host, name)
        self.started.clear()


@pytest.fixture(scope="module")
def podman(lab: Lab) -> Iterator[PodmanLab]:
    pl = PodmanLab(lab)
    try:
        pl.start()
        yield pl
    finally:
        pl.down()


@pytest.fixture
def pods(lab: Lab, podman: PodmanLab, desired: DesiredState) -> Iterator[Pods]:
    made = Pods(lab, podman)
    try:
        yield made
    finally:
        made.cleanup()
        for net in desired.networks():
            with contextlib.suppress(Exception):
                desired.remove_network(net.name, force=True)


def test_containers_on_two_hosts_ping_and_other_networks_stay_apart(
    desired: DesiredState, pods: Pods
) -> None:
    desired.create_network("pblue", "10.81.0.0/24", vni=8101)
    desired.create_network("pred", "10.81.0.0/24", vni=8102)  # the same subnet
    pods.sync()
    a = pods.run("h1", "a", "pblue")
    b = pods.run("h2", "b", "pblue")
    c = pods.run("h2", "c", "pred")
    assert a.ip != b.ip
    assert pods.ping(b, a.ip) and pods.ping(a, b.ip)
    other = next(ip for ip in (a.ip, b.ip) if ip != c.ip)
    assert not pods.ping(c, other, count=1), "a container reached another network"


def test_rm_releases_the_address_and_the_veth(lab: Lab, desired: DesiredState, pods: Pods) -> None:
    desired.create_network("prm", "10.82.0.0/24", vni=8201)
    pods.sync()
    a = pods.run("h1", "gone", "prm")
    eid = endpoint_id_for(a.id, "eth0")
    assert desired.get_endpoint("prm", eid).ip == a.ip
    pods.rm("h1", "gone")
    kv = lab.kv()
    try:
        assert kv.get(keys.endpoint("prm", eid)) is None
        assert kv.get(keys.ipam("prm", a.ip)) is None, "the address stayed taken"
    finally:
        kv.close()
    host_if = veth_host_name("prm", eid)
    deadline = time.monotonic() + 10
    while run_in_netns(lab.host("h1").netns, ["ip", "link", "show", host_if]).returncode == 0:
        assert time.monotonic() < deadline, f"{host_if} stayed on h1"
        time.sleep(0.1)


def test_twenty_concurrent_containers_get_distinct_addresses(
    desired: DesiredState, pods: Pods
) -> None:
    desired.create_network("pmany", "10.83.0.0/24", vni=8301)
    pods.sync()
    jobs = [("h1" if i % 2 else "h2", f"m{i}") for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        got = list(pool.map(lambda j: pods.run(j[0], j[1], "pmany"), jobs))
    ips = [c.ip for c in got]
    assert len(set(ips)) == 20, ips
    recorded = {e.ip: e.host for e in desired.endpoints("pmany")}
    assert recorded == {c.ip: c.host for c in got}
    assert pods.ping(got[0], got[19].ip) and pods.ping(got[19], got[0].ip)


def test_chaining_with_tuning(podman: PodmanLab, desired: DesiredState, pods: Pods) -> None:
    desired.create_network("ptune", "10.84.0.0/24", vni=8401)
    pods.sync()
    path = podman.cni_dir("h1") / "ptune.conflist"
    conf = json.loads(path.read_text())
    conf["plugins"].append({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_ignore": "1"}})
    chained = podman.cni_dir("h1") / "ptuned.conflist"
    chained.write_text(json.dumps({**conf, "name": "ptuned"}))
    try:
        pods.started.append(("h1", "t"))
        podman.podman("h1", ["run", "-d", "--name", "t", "--network", "ptuned", IMAGE,
                             "sleep", "3600"])  # fmt: skip
        got = podman.podman("h1", ["exec", "t", "cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore"])
        assert got.stdout.strip() == "1"
        (ep,) = desired.endpoints("ptune")
        assert ep.host == "h1"
    finally:
        pods.cleanup()
        chained.unlink()


def test_agent_restart_under_ping_loses_nothing(
    lab: Lab, desired: DesiredState, pods: Pods
) -> None:
    desired.create_network("prst", "10.85.0.0/24", vni=8501)
    pods.sync()
    a = pods.run("h1", "ra", "prst")
    b = pods.run("h2", "rb", "prst")
    assert pods.ping(b, a.ip)
    with continuous_ping(lab, b.placed(), a.placed(), duration=8.0) as result:
        for host in ("h1", "h2"):
            lab.agents.restart(host, wait=True)
            assert first_pass_changes(lab, host) == 0, f"restarted agent {host} changed things"
    res = result[0]
    assert res.sent > 500 and not res.lost, f"lost {len(res.lost)} of {res.sent}"
    c = pods.run("h1", "rc", "prst")  # and a new container joins after the restarts
    assert pods.ping(c, b.ip)


SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8088))
s.listen(16)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode() + b"\\n")
    c.close()
"""


def test_egress_to_an_outside_server(lab: Lab, desired: DesiredState, pods: Pods) -> None:
    """A stand-in outside server (a namespace on the lab's underlay): a container of an egress
    network reaches it, seen as its host; one of a network without egress does not."""
    ns, address = lab.add_outsider("pout")
    server = lab.popen(ns, [sys.executable, "-c", SERVER])
    try:
        desired.create_network("pweb", "10.86.0.0/24", vni=8601, egress="masquerade")
        desired.create_network("pdark", "10.87.0.0/24", vni=8701)
        pods.sync()
        web = pods.run("h2", "w", "pweb")
        dark = pods.run("h2", "dk", "pdark")
        got = pods.podman.podman("h2", ["exec", "w", "nc", "-w", "3", address, "8088"])
        assert got.stdout.strip() == lab.host("h2").vtep
        refused = pods.podman.podman(
            "h2", ["exec", "dk", "nc", "-w", "2", address, "8088"], check=False
        )
        assert refused.stdout.strip() == "", "a network without egress reached the outside"
        assert web.ip != dark.ip
    finally:
        server.kill()
        server.wait()

"""Egress on the lab (kernel backend): a network created with ``egress: masquerade`` reaches
a stand-in outside server -- a namespace on the lab's underlay, never a real address -- through
its gateway on every host with a local endpoint, masqueraded behind that host's address; and
nothing else is routed: not a network without egress, not one overlay into another, not an
overlay into the host itself, not the outside into an overlay.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from controller.lab.nsutil import run_in_netns
from controller.lab.probes import ping
from controller.lab.scenario import Placed, Scenario
from controller.lab.topology import Lab
from controller.model.naming import derive_mac

LAB_NETS = {"kernel": ("hgr", "172.31.200.0/24", "172.31.199.0/24")}
PORT = 8088
SERVER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT}))
s.listen(16)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""
CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as c:
        print(c.recv(100).decode())
except OSError as exc:
    print("failed", exc)
"""


@pytest.fixture(scope="module")
def outside(lab: Lab) -> Iterator[tuple[str, str]]:
    """The outside server: (its namespace, its address), answering who connected."""
    ns, address = lab.add_outsider("out")
    server = lab.popen(ns, [sys.executable, "-c", SERVER])
    time.sleep(0.3)
    try:
        yield ns, address
    finally:
        server.kill()
        server.wait()


def who_am_i(src: Placed, address: str) -> str:
    done = run_in_netns(src.netns, [sys.executable, "-c", CLIENT, address, str(PORT)])
    return done.stdout.strip()


def test_an_egress_network_reaches_the_outside_masqueraded_per_host(
    lab: Lab, overlay: Scenario, outside: tuple[str, str]
) -> None:
    _, address = outside
    overlay.network("web", "10.91.0.0/24", vni=9101, egress="masquerade")
    a = overlay.endpoint("web", "h1", "ea")
    b = overlay.endpoint("web", "h2", "eb")
    overlay.converge()
    assert ping(a.netns, "10.91.0.1", count=2).ok, "the gateway does not answer"
    assert who_am_i(a, address) == lab.host("h1").vtep
    assert who_am_i(b, address) == lab.host("h2").vtep
    assert ping(a.netns, b.ip, count=2).ok, "the overlay itself broke"
    # the gateway's MAC is the same on every host: whichever host answers, it is right
    neigh = run_in_netns(a.netns, ["ip", "neigh", "show", "10.91.0.1"]).stdout
    assert derive_mac(9101, "10.91.0.1") in neigh, neigh


def test_nothing_else_is_routed(lab: Lab, overlay: Scenario, outside: tuple[str, str]) -> None:
    out_ns, address = outside
    overlay.network("web2", "10.92.0.0/24", vni=9201, egress="masquerade")
    overlay.network("other", "10.93.0.0/24", vni=9301, egress="masquerade")
    overlay.network("dark", "10.94.0.0/24", vni=9401)
    a = overlay.endpoint("web2", "h1", "na")
    o = overlay.endpoint("other", "h1", "no")
    d = overlay.endpoint("dark", "h1", "nd")
    overlay.converge()
    assert who_am_i(a, address) == lab.host("h1").vtep
    # a network without egress: even with a route of its own making, nothing leaves
    run_in_netns(d.netns, ["ip", "route", "add", "default", "dev", "eth0"])
    assert who_am_i(d, address).startswith("failed")
    # no overlay into another, even through the host that holds both gateways
    assert not ping(a.netns, o.ip, count=2, wait=1.0).received
    assert not ping(a.netns, "10.93.0.1", count=1, wait=1.0).received, "another gateway"
    # nor into the host itself (its VTEP, where etcd and sshd would listen)
    assert not ping(a.netns, lab.host("h1").vtep, count=1, wait=1.0).received
    assert who_am_i(a, lab.host("h1").vtep).startswith("failed")
    # and the outside cannot come in, even with a route through the host
    run_in_netns(out_ns, ["ip", "route", "add", "10.92.0.0/24", "via", lab.host("h1").vtep])
    try:
        assert not ping(out_ns, a.ip, count=2, wait=1.0).received
    finally:
        run_in_netns(out_ns, ["ip", "route", "del", "10.92.0.0/24"])
    counters = subprocess.run(
        ["ip", "netns", "exec", lab.host("h1").netns, "nft", "list", "counters", "table", "inet",
         "heddle"], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for name in ("routed_dropped", "host_dropped"):  # the drops were heddle's rules
        packets = re.search(rf"counter {name} {{\s*packets (\d+)", counters)
        assert packets and int(packets[1]) > 0, counters

"""End-to-end on a mixed lab: h1 runs the kernel backend, h2 and h3 the ovs backend.

Both backends speak plain VXLAN on UDP 4789 with the network's VNI, so one network spans
them: every pair of endpoints reaches each other (ICMP, and TCP, whose checksums are where the
userspace datapath is picky: ``controller.lab.topology`` turns TX checksum offload off on the
kernel host's ``ul0`` for that), overlapping networks stay isolated across the backend
boundary, and the underlay still carries nothing but VXLAN unicast.
"""

from __future__ import annotations

import time

from controller.dataplane.ovs_host import tx_checksum
from controller.lab.capture import capturing, judge
from controller.lab.pinger import ping
from controller.lab.probes import tcp_transfer, wait_ping
from controller.lab.scenario import Placed, Scenario
from controller.lab.topology import Lab

LAB_BACKENDS = ("mixed",)


def test_mixed_lab_connects_every_pair_of_a_network(lab: Lab, overlay: Scenario) -> None:
    assert [h["backend"] for h in lab.status()["hosts"]] == ["kernel", "ovs", "ovs"]
    overlay.network("mix", "10.33.0.0/24", vni=5201)
    overlay.network("other", "10.33.0.0/24", vni=5202)
    eps: list[Placed] = []
    for h in ("h1", "h2", "h3"):
        for i in (1, 2):  # two per host: local pairs on each backend too
            eps.append(
                overlay.endpoint("mix", h, f"mx{h[1]}{i}", ip=f"10.33.0.{10 * i + int(h[1])}")
            )
    intruders = [overlay.endpoint("other", h, f"ot{h[1]}", ip=f"10.33.0.{40 + int(h[1])}")
                 for h in ("h1", "h2")]  # fmt: skip
    overlay.converge()
    pairs = [(a, b) for a in eps for b in eps if a is not b]
    for a, b in pairs:
        assert wait_ping(a.netns, b.ip, timeout=10.0), f"{a.host} {a.ip} -> {b.host} {b.ip}"

    # What keeps TCP intact across the userspace datapath: the ovs agents turn TX checksum
    # offload off on their endpoints' eth0, the lab on the kernel host's ul0.
    assert tx_checksum(lab.host("h1").netns, "ul0") is False
    for e in eps:
        if lab.host(e.host).backend == "ovs":
            assert tx_checksum(e.netns, "eth0") is False, f"{e.id}: TX checksum offload on"
    by_host = {h: next(e for e in eps if e.host == h) for h in ("h1", "h2", "h3")}
    for src, dst in (("h1", "h2"), ("h2", "h1"), ("h2", "h3"), ("h3", "h1")):
        a, b = by_host[src], by_host[dst]
        took = tcp_transfer(a.netns, b.netns, b.ip, nbytes=1 << 20)
        print(f"TCP 1 MiB {src} ({lab.host(src).backend}) -> {dst} ({lab.host(dst).backend}): "
              f"{took * 1000:.0f} ms")  # fmt: skip

    # The other network uses the same subnet: its endpoints reach none of "mix"'s addresses
    # (.11 exists only in "mix"), whatever the backend on either side.
    for o in intruders:
        for victim in (by_host["h1"], by_host["h2"], by_host["h3"]):
            assert ping(o.netns, victim.ip, count=3, interval=0.02, wait=0.3).received == 0

    vteps = [h.vtep for h in lab.hosts]
    with capturing(lab.underlay_bridge) as cap:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for a, b in pairs:
                if a.host != b.host:
                    ping(a.netns, b.ip, count=2, interval=0.01, wait=0.3)
    verdict = judge(cap.frames, vteps)
    print(f"mixed underlay capture: {verdict}")
    assert verdict.vxlan > 0 and verdict.clean, verdict.violations

"""End-to-end: a 3-host lab whose VTEPs are IPv6 addresses (VXLAN over IPv6), on each backend.

The lab's underlay is ``fd00:172:31:191::/64`` (``fd00:172:31:187::/64`` for the ovs lab;
``heddle lab up --underlay ipv6`` builds the same with its default subnet). What is checked:
a dual-stack overlay carries both families between every pair from the first packet on, its
automatic MTU is the underlay's less 70 bytes and a packet of exactly that size crosses with
DF, VXLAN over IPv6 from a host that is no member is dropped and counted, and a restarted
agent changes nothing.
"""

from __future__ import annotations

import time

from controller.lab.attack import icmp_echo, send_vxlan
from controller.lab.capture import capturing, ipv4_from
from controller.lab.pinger import ping
from controller.lab.probes import agent_metric, wait_ping
from controller.lab.scenario import Placed, Scenario, first_pass_changes
from controller.lab.topology import Lab

LAB_BACKENDS = ("kernel", "ovs")
LAB_NETS = {
    "kernel": ("hu6", "172.31.192.0/24", "fd00:172:31:191::/64"),
    "ovs": ("h6u", "172.31.188.0/24", "fd00:172:31:187::/64"),
}
FORGED_SRC = ("02:00:00:00:77:77", "10.71.0.250")


def _vxlan_dropped(lab: Lab, host: str) -> float:
    address = lab.agents.metrics_address(host)
    return agent_metric(address, "heddle_filter_dropped_total", reason="vxlan") or 0.0


def _spread(ov: Scenario, network: str, tag: str) -> list[Placed]:
    return [ov.endpoint(network, h.name, f"{tag}{k}") for k, h in enumerate(ov.lab.hosts, 1)]


def test_the_lab_has_ipv6_vteps_and_a_dual_stack_overlay_crosses_it(
    lab: Lab, overlay: Scenario
) -> None:
    assert all(":" in h.vtep for h in lab.hosts)
    overlay.network("over6", "10.70.0.0/24", vni=5701, subnet6="fd00:70::/64")
    eps = _spread(overlay, "over6", "u")
    overlay.converge()
    for a in eps:  # the first packet crosses: member VTEPs are resolved before traffic
        for b in eps:
            if a is not b:
                assert ping(a.netns, b.ip6 or "", count=1, wait=2.0).ok, f"{a.host} -> {b.ip6}"
    for a in eps:
        for b in eps:
            if a is not b:
                for dst in (b.ip, b.ip6):
                    assert dst is not None
                    assert wait_ping(a.netns, dst, timeout=10.0), f"{a.host} -> {dst}"
    # 1500 - 70: the largest IPv4 packet with DF crosses, one byte more does not
    mtu = 1500 - 70
    a, b = eps[0], eps[1]
    assert ping(a.netns, b.ip, count=3, size=mtu - 28, df=True).ok
    too_big = ping(a.netns, b.ip, count=3, size=mtu - 27, df=True)
    assert too_big.received == 0


def test_vxlan_over_ipv6_from_no_member_is_dropped_and_counted(lab: Lab, overlay: Scenario) -> None:
    overlay.network("guard6", "10.71.0.0/24", vni=5702)
    peer = overlay.endpoint("guard6", "h1", "g1")
    victim = overlay.endpoint("guard6", "h2", "g2")
    overlay.converge()
    assert wait_ping(peer.netns, victim.ip, timeout=10.0)
    frame = icmp_echo(FORGED_SRC[0], victim.mac, FORGED_SRC[1], victim.ip)

    def inject(netns: str, src: str) -> int:
        with capturing("eth0", victim.netns, promisc=False) as cap:
            send_vxlan(netns, src, lab.host("h2").vtep, 5702, frame, count=5)
            time.sleep(0.3)
        return ipv4_from(cap.frames, FORGED_SRC[1])

    h1 = lab.host("h1")  # a member: the same packet is delivered
    assert inject(h1.netns, h1.vtep) == 5
    outsider, address = lab.add_outsider("out6")
    assert ":" in address
    before = _vxlan_dropped(lab, "h2")
    assert inject(outsider, address) == 0
    deadline = time.monotonic() + 5.0
    while _vxlan_dropped(lab, "h2") < before + 5:
        assert time.monotonic() < deadline, "the drops were not counted"
        time.sleep(0.2)


def test_a_restarted_agent_changes_nothing_on_an_ipv6_underlay(lab: Lab, overlay: Scenario) -> None:
    overlay.network("keep6u", None, vni=5703, subnet6="fd00:72::/64")
    eps = _spread(overlay, "keep6u", "k")
    overlay.converge()
    assert wait_ping(eps[0].netns, eps[1].ip, timeout=10.0)
    lab.agents.restart("h2")
    assert first_pass_changes(lab, "h2") == 0
    assert wait_ping(eps[0].netns, eps[1].ip, timeout=10.0)

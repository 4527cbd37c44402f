"""End-to-end: IPv6 and dual-stack overlays on three lab hosts (both backends, IPv4 underlay).

The lab's endpoint namespaces have IPv6 off in their defaults (``controller/lab/topology.py``),
as some runtimes leave them: the agent turns it on for the interfaces it gives an IPv6 address.
What is checked: every pair pings over IPv6 (and IPv4 where the network has it), networks
with the same IPv6 subnet stay apart, the underlay carries VXLAN unicast only (no neighbour
discovery multicast: on the kernel backend the VXLAN device answers solicitations from the
agent's entries, on the ovs backend the ND responder in flows), an
endpoint cannot send from another's IPv6 address nor advertise it, a restarted agent changes
nothing, and removing endpoints leaves no neighbour entry or link behind.
"""

from __future__ import annotations

import socket
import time

from pyroute2 import IPRoute

from controller.lab.attack import send_advert
from controller.lab.capture import adverts_for, capturing, ipv6_from, judge
from controller.lab.pinger import ping
from controller.lab.probes import forge_neighbour, ovs_nd_targets, wait_ping
from controller.lab.scenario import Placed, Scenario, first_pass_changes, wait_no_owned_links
from controller.lab.topology import Lab
from controller.model.naming import vxlan_name

LAB_BACKENDS = ("kernel", "ovs")
LAB_NETS = {
    "kernel": ("hl6", "172.31.194.0/24", "172.31.193.0/24"),
    "ovs": ("h6o", "172.31.190.0/24", "172.31.189.0/24"),
}


def _spread(ov: Scenario, network: str, tag: str) -> list[Placed]:
    return [ov.endpoint(network, h.name, f"{tag}{k}") for k, h in enumerate(ov.lab.hosts, 1)]


def _pairs(eps: list[Placed]) -> list[tuple[Placed, Placed]]:
    return [(a, b) for a in eps for b in eps if a.network == b.network and a.host != b.host]


def _v6(p: Placed) -> str:
    assert p.ip6 is not None, f"{p.id} has no IPv6 address"
    return p.ip6


def _answered6(lab: Lab, host: str, vni: int) -> set[str]:
    """The IPv6 addresses ``host`` answers solicitations for in ``vni``: the remote ones of
    the neighbour entries on its VXLAN device (kernel backend); the ND responder's flows,
    which cover its local endpoints too (ovs backend)."""
    if lab.host(host).backend == "ovs":
        return ovs_nd_targets(lab.ovs(host), vni)
    with IPRoute(netns=lab.host(host).netns, flags=0) as ipr:
        found = ipr.link_lookup(ifname=vxlan_name(vni))
        if not found:
            return set()
        entries = ipr.neigh("dump", family=socket.AF_INET6)
        return {str(m.get("NDA_DST")) for m in entries if m["ifindex"] == found[0]}


def test_dual_stack_and_ipv6_only_pairs_ping(overlay: Scenario) -> None:
    overlay.network("ds6", "10.60.0.0/24", vni=5601, subnet6="fd00:60::/64")
    overlay.network("only6", None, vni=5602, subnet6="fd00:61::/64")
    dual, only = _spread(overlay, "ds6", "d"), _spread(overlay, "only6", "o")
    overlay.converge()
    assert all(p.ip6 and p.ip != p.ip6 for p in dual) and all(p.ip == p.ip6 for p in only)
    for a, b in _pairs(dual + only):
        for dst in dict.fromkeys((b.ip, _v6(b))):
            assert wait_ping(a.netns, dst, timeout=10.0), f"{a.network}: {a.host} -> {dst}"


def test_overlapping_ipv6_networks_are_isolated(overlay: Scenario) -> None:
    """Two networks with one IPv6 subnet: even with a forged neighbour entry for the other
    network's address and MAC, nothing crosses."""
    overlay.network("blue6", None, vni=5603, subnet6="fd00:62::/64")
    overlay.network("green6", None, vni=5604, subnet6="fd00:62::/64")
    blue = _spread(overlay, "blue6", "b")
    green = [
        overlay.endpoint("green6", h.name, f"g{k}", ip6=f"fd00:62::{k + 0x20:x}")
        for k, h in enumerate(overlay.lab.hosts, 1)
    ]
    overlay.converge()
    for a, b in _pairs(blue + green):
        assert wait_ping(a.netns, _v6(b), timeout=10.0), f"{a.network}: {a.host} -> {b.ip6}"
    for src, victim in ((blue[0], green[1]), (green[2], blue[0])):
        for forged in (False, True):
            if forged:
                forge_neighbour(src.netns, _v6(victim), victim.mac)
            with capturing("eth0", victim.netns) as cap:
                res = ping(src.netns, _v6(victim), count=5, interval=0.02, wait=0.5)
                time.sleep(0.2)
            what = f"{src.network} {src.ip6} -> {victim.network} {victim.ip6} forged={forged}"
            assert res.received == 0, what
            assert ipv6_from(cap.frames, _v6(src)) == 0, what


def test_underlay_carries_no_neighbour_discovery(lab: Lab, overlay: Scenario) -> None:
    """While endpoints ping each other over IPv6 from their first packet on, the underlay sees
    VXLAN unicast only: solicitations are answered on the sender's host, and the multicast an
    IPv6 stack sends without a link-local address (MLD from ::) is dropped at its port."""
    for h in lab.hosts:
        for o in lab.hosts:
            if o.name != h.name:
                assert ping(h.netns, o.vtep, count=1, wait=0.5).ok
    vteps = [h.vtep for h in lab.hosts]
    sent = 0
    with capturing(lab.underlay_bridge) as cap:
        overlay.network("wire6", None, vni=5605, subnet6="fd00:63::/64")
        eps = _spread(overlay, "wire6", "w")
        overlay.converge()
        for a, b in _pairs(eps):
            assert wait_ping(a.netns, _v6(b), timeout=10.0)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for a, b in _pairs(eps):
                sent += ping(a.netns, _v6(b), count=5, interval=0.01, wait=0.5).received
    verdict = judge(cap.frames, vteps)
    print(f"underlay capture: {verdict}")
    assert verdict.vxlan >= 2 * sent, verdict
    assert verdict.clean, verdict.violations


def test_an_endpoint_cannot_use_or_advertise_a_neighbours_ipv6_address(
    lab: Lab, overlay: Scenario
) -> None:
    overlay.network("spoof6", "10.64.0.0/24", vni=5606, subnet6="fd00:64::/64")
    attacker = overlay.endpoint("spoof6", "h1", "sa")
    victim = overlay.endpoint("spoof6", "h1", "sv")  # same host: the same bridge
    observers = [overlay.endpoint("spoof6", h, f"so{h[-1]}") for h in ("h1", "h2")]
    overlay.converge()
    for o in observers:
        assert wait_ping(attacker.netns, _v6(o), timeout=10.0)
        assert wait_ping(o.netns, _v6(victim), timeout=10.0)
    with (
        capturing("eth0", observers[0].netns) as near,
        capturing("eth0", observers[1].netns) as far,
    ):
        send_advert(attacker.netns, _v6(victim), attacker.mac)
    for cap in (near, far):
        assert adverts_for(cap.frames, _v6(victim)) == 0, "a forged advertisement arrived"
    with IPRoute(netns=attacker.netns, flags=0) as ipr:  # the victim's address, taken
        idx = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=idx, address=_v6(victim), prefixlen=64, flags=0x02)
    with (
        capturing("eth0", observers[0].netns) as near,
        capturing("eth0", observers[1].netns) as far,
    ):
        for o in observers:
            res = ping(attacker.netns, _v6(o), count=3, interval=0.02, wait=0.3,
                       source=_v6(victim))  # fmt: skip
            assert res.received == 0, f"sent from its neighbour's address, answered by {o.id}"
        time.sleep(0.2)
    for cap in (near, far):
        assert ipv6_from(cap.frames, _v6(victim)) == 0, "a packet from the taken address arrived"
    for o in observers:
        assert wait_ping(o.netns, _v6(victim), timeout=5.0), "the victim stopped answering"


def test_a_restarted_agent_changes_nothing_and_removal_leaves_nothing(
    lab: Lab, overlay: Scenario
) -> None:
    overlay.network("keep6", "10.65.0.0/24", vni=5607, subnet6="fd00:65::/64")
    eps = _spread(overlay, "keep6", "k")
    overlay.converge()
    assert wait_ping(eps[0].netns, _v6(eps[1]), timeout=10.0)
    lab.agents.restart("h1")
    assert first_pass_changes(lab, "h1") == 0
    assert _answered6(lab, "h2", 5607) - {_v6(eps[1])} == {_v6(eps[0]), _v6(eps[2])}
    overlay.remove(eps[0])
    deadline = time.monotonic() + 10.0
    while _v6(eps[0]) in _answered6(lab, "h2", 5607):
        assert time.monotonic() < deadline, "the removed endpoint's IPv6 entry stayed"
        time.sleep(0.1)
    overlay.cleanup()
    left = wait_no_owned_links(lab)
    assert not left, f"owned links left after removing everything: {left}"

"""``FlowSession`` (our OpenFlow 1.4 codec and bundles) against a real ovs-vswitchd.

The contract: every flow the planner can render, installed over the session, reads back with
``ovs-ofctl`` (``OpenFlow.dump_text``) as the very same ``Flow``, and the session's own dump
(flow-stats decoded by our codec) reads exactly what ``ovs-ofctl`` reads; strict deletes remove
exactly their flow and only with our cookie; a replace makes a list the whole table; a bundle
the switch refuses changes nothing. One private
OVS instance (``netdev`` datapath) per module in a throw-away namespace, stopped by PID.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroute2 import netns

from controller.dataplane.ofp_session import FlowSession, FlowSessionError
from controller.dataplane.openflow import OpenFlow
from controller.lab import ovs as lab_ovs
from controller.model.flow import COOKIE, Flow, make_flow
from controller.model.records import Endpoint, Host, Network
from controller.model.view import Snapshot, host_view
from controller.plan.flows import render_flows, render_phy_flows

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a namespace and OVS daemons"),
    pytest.mark.skipif(
        shutil.which("ovs-vswitchd") is None, reason="apt-get install openvswitch-switch"
    ),
]

BRIDGE = "br-int"
HOSTS = [Host(f"h{i}", f"192.0.2.{i}", backend="ovs") for i in range(1, 5)]


class Switch:
    def __init__(self, inst: lab_ovs.OvsInstance) -> None:
        self.inst = inst
        self.session = FlowSession(str(inst.rundir / f"{BRIDGE}.mgmt"), timeout=10.0)
        self.ofctl = OpenFlow(str(inst.rundir))

    def ours(self) -> frozenset[Flow]:
        """Our flows as ``ovs-ofctl`` reads them, checked against the session's own dump."""
        text = self.ofctl.dump_text(BRIDGE)
        assert self.session.dump() == text
        return text

    def clear(self) -> None:
        self.session.modify((), self.ours())
        assert self.ours() == frozenset()


@pytest.fixture(scope="module")
def switch() -> Iterator[Switch]:
    name = f"hof-{uuid.uuid4().hex[:6]}"
    workdir = Path(f"/tmp/{name}")
    inst: lab_ovs.OvsInstance | None = None
    netns.create(name)
    try:
        inst = lab_ovs.start(name, workdir)
        inst.vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev",
                   "fail_mode=secure")  # fmt: skip
        sw = Switch(inst)
        yield sw
        sw.session.close()
    finally:
        if inst is not None:
            inst.stop(remove_workdir=True)
        shutil.rmtree(workdir, ignore_errors=True)
        netns.remove(name)


def _rendered() -> tuple[Flow, ...]:
    """Every kind of flow the planner renders: two IPv4 networks with overlapping subnets, a
    dual-stack and an IPv6-only network sharing an IPv6 subnet, local and remote endpoints on
    three other hosts (over IPv4 VTEPs, and again over IPv6 ones), plus br-phy's flows."""
    blue, red = Network("blue", 100, "10.1.0.0/24"), Network("red", 0x123456, "10.1.0.0/24")
    dual = Network("dual", 300, "10.3.0.0/24", subnet6="fd00:3::/64")
    only6 = Network("only6", 400, None, subnet6="fd00:3::/64")
    eps = [
        Endpoint("e", "dual", "h1", "10.3.0.5", "02:01:0a:03:00:05", "ns-e", ip6="fd00:3::5"),
        Endpoint("f", "dual", "h2", "10.3.0.6", "02:01:0a:03:00:06", ip6="fd00:3::6"),
        Endpoint("g", "only6", "h1", None, "02:01:00:00:00:07", "ns-g", ip6="fd00:3::7"),
        Endpoint("h", "only6", "h3", None, "02:01:00:00:00:08", ip6="fd00:3::6"),
        Endpoint("a", "blue", "h1", "10.1.0.10", "02:64:0a:01:00:0a", "ns-a"),
        Endpoint("b", "blue", "h1", "10.1.0.11", "02:64:0a:01:00:0b", "ns-b"),
        Endpoint("c", "blue", "h2", "10.1.0.20", "02:64:0a:01:00:14"),
        Endpoint("d", "blue", "h3", "10.1.0.30", "02:64:0a:01:00:1e"),
        Endpoint("r", "red", "h1", "10.1.0.10", "02:c8:0a:01:00:0a", "ns-r"),
        Endpoint("s", "red", "h4", "10.1.0.40", "02:c8:0a:01:00:28"),
    ]
    snap = Snapshot(
        revision=1,
        networks={"blue": blue, "red": red, "dual": dual, "only6": only6},
        endpoints={(e.network, e.id): e for e in eps},
        hosts={h.name: h for h in HOSTS},
    )
    ofports = {("blue", "a"): 10, ("blue", "b"): 11, ("red", "r"): 12, ("dual", "e"): 13,
               ("only6", "g"): 14}  # fmt: skip
    flows = render_flows(host_view(snap, HOSTS[0]), ofports, 100)
    hosts6 = {h.name: replace(h, vtep=f"fd00:ff::{h.name[1:]}") for h in HOSTS}
    over6 = render_flows(host_view(replace(snap, hosts=hosts6), hosts6["h1"]), ofports, 100)
    keys = {f.key for f in flows}
    flows += tuple(f for f in over6 if f.key not in keys)  # tun_ipv6_src, tun_ipv6_dst
    keys = {f.key for f in flows}
    return flows + tuple(f for f in render_phy_flows(1) if f.key not in keys)


def test_every_rendered_flow_reads_back_as_itself(switch: Switch) -> None:
    switch.clear()
    flows = _rendered()
    assert {a.split(":")[0] for f in flows for a in f.actions} >= {
        "output", "set_field", "move", "goto_table", "IN_PORT", "LOCAL", "drop",
    }  # fmt: skip
    switch.session.modify(flows, ())
    assert switch.ours() == frozenset(flows)
    # a changed flow is an add with the same key: it replaces the old one
    changed = make_flow(flows[5].table, flows[5].priority, dict(flows[5].match), ["drop"])
    switch.session.modify((changed,), ())
    assert switch.ours() == (frozenset(flows) - {flows[5]}) | {changed}
    switch.session.modify((), (changed, *flows[:5]))
    assert switch.ours() == frozenset(flows[6:])
    # replace: the whole table, foreign flows too (as ovs-ofctl replace-flows)
    foreign = make_flow(10, 5, {"reg6": 3}, ["drop"], cookie=0x1234)
    switch.inst.ofctl("-O", "OpenFlow14", "add-flow", BRIDGE, foreign.text())
    switch.session.replace(flows[:7])
    assert switch.ours() == frozenset(flows[:7])
    assert "cookie=0x1234" not in switch.inst.ofctl("-O", "OpenFlow14", "dump-flows", BRIDGE)
    switch.clear()


def test_strict_delete_spares_other_cookies_and_a_refused_bundle_changes_nothing(
    switch: Switch,
) -> None:
    switch.clear()
    mine = make_flow(20, 100, {"reg6": 7, "dl_dst": "02:00:00:00:00:01"}, ["output:3"])
    theirs = Flow(mine.table, mine.priority, mine.match, ("output:4",), cookie=0x1234)
    switch.inst.ofctl("-O", "OpenFlow14", "add-flow", BRIDGE, theirs.text())
    switch.session.modify((), (mine,))  # not there with our cookie: theirs stays
    assert switch.inst.ofctl("-O", "OpenFlow14", "dump-flows", BRIDGE).count("cookie=0x1234") == 1
    # a flow with our cookie outside the codec's vocabulary: the dump falls back to ovs-ofctl
    odd = "cookie=0x68646c65,table=0,priority=7,udp,tp_dst=53,actions=drop"
    switch.inst.ofctl("-O", "OpenFlow14", "add-flow", BRIDGE, odd)
    with pytest.raises(ValueError):
        switch.session.dump()
    assert any(f.priority == 7 for f in switch.ofctl.dump(BRIDGE))
    switch.inst.ofctl("-O", "OpenFlow14", "del-flows", BRIDGE, "cookie=0x68646c65/-1,udp")
    switch.inst.ofctl("-O", "OpenFlow14", "del-flows", BRIDGE, "cookie=0x1234/-1")
    good = make_flow(20, 100, {"reg6": 8}, ["output:3"])
    bad = make_flow(99, 100, {"reg6": 9}, ["goto_table:10"])  # goto_table must go forward
    with pytest.raises(FlowSessionError, match="refused"):
        switch.session.modify((good, bad), ())
    assert switch.ours() == frozenset()
    switch.session.modify((good,), ())  # the session reconnects after a failure
    assert switch.ours() == {good}
    with pytest.raises(FlowSessionError, match="cannot encode"):
        switch.session.modify((make_flow(0, 1, {"udp_dst": 53}, ["drop"]),), ())
    switch.clear()


_macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
_ips = st.ip_addresses(v=4).map(str)
_ports = st.integers(1, 0xFEFF)  # OVS keeps 0xff00 and up for reserved ports
_ip6s = st.integers(0, 2**120 - 1).map(lambda n: str(ipaddress.IPv6Address((0xFD << 120) | n)))


@st.composite
def _flows(draw: st.DrawFn) -> Flow:
    table = draw(st.sampled_from([0, 10, 20, 30]))
    match: dict[str, str | int] = {}
    kind = draw(st.sampled_from(["", "ip", "arp", "ipv6", "icmp6"]))
    if kind:
        match[kind] = ""
    for name, strat in (("in_port", _ports), ("reg6", st.integers(0, 2**24 - 1)),
                        ("tun_id", st.integers(0, 2**24 - 1)),
                        ("tun_src", _ips), ("tun_ipv6_src", _ip6s),
                        ("dl_src", _macs), ("dl_dst", _macs)):  # fmt: skip
        if draw(st.booleans()):
            match[name] = draw(strat)
    if kind == "ip" and draw(st.booleans()):
        match["nw_src"] = draw(_ips)
    if kind == "arp":
        for name, strat in (("arp_op", st.integers(1, 2)), ("arp_spa", _ips),
                            ("arp_tpa", _ips), ("arp_sha", _macs)):  # fmt: skip
            if draw(st.booleans()):
                match[name] = draw(strat)
    if kind in ("ipv6", "icmp6") and draw(st.booleans()):
        match["ipv6_src"] = draw(_ip6s)
    icmp_type = draw(st.sampled_from([None, 128, 134, 135, 136])) if kind == "icmp6" else None
    if icmp_type is not None:
        match["icmp_type"] = icmp_type
        if icmp_type in (135, 136) and draw(st.booleans()):
            match["nd_target"] = draw(_ip6s)
    six: list[st.SearchStrategy[str]] = []
    if kind in ("ipv6", "icmp6"):  # OVS checks a set_field's prerequisites against the match
        six.append(_ip6s.map(lambda v: f"set_field:{v}->ipv6_src"))
        six.append(st.just("move:NXM_NX_IPV6_SRC[]->NXM_NX_IPV6_DST[]"))
    if icmp_type is not None:
        six.append(st.sampled_from([128, 129, 136]).map(lambda v: f"set_field:{v}->icmpv6_type"))
    if icmp_type == 135:
        six.append(st.integers(0, 2**32 - 1).map(lambda v: f"set_field:{v}->nd_reserved"))
        six.append(st.integers(0, 255).map(lambda v: f"set_field:{v}->nd_options_type"))
    if icmp_type == 136:
        six.append(st.just("move:NXM_OF_ETH_SRC[]->NXM_NX_ND_TLL[]"))
    actions = draw(st.lists(st.one_of(
        _ports.map(lambda p: f"output:{p}"),
        st.integers(0, 2**24 - 1).map(lambda v: f"set_field:{v}->reg6"),
        st.integers(0, 2**24 - 1).map(lambda v: f"set_field:{v}->tun_id"),
        _ips.map(lambda v: f"set_field:{v}->tun_dst"),
        _ip6s.map(lambda v: f"set_field:{v}->tun_ipv6_dst"),
        _macs.map(lambda v: f"set_field:{v}->eth_src"),
        *six,
    ), max_size=4))  # fmt: skip
    if table < 30 and draw(st.booleans()):
        actions.append(f"goto_table:{table + 10}")
    return make_flow(table, draw(st.integers(0, 65535)), match, actions or ["drop"])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_flows(), min_size=1, max_size=8, unique_by=lambda f: f.key))
def test_generated_flows_read_back_as_themselves(switch: Switch, flows: list[Flow]) -> None:
    switch.clear()
    switch.session.modify(flows, ())
    assert switch.ours() == frozenset(flows)
    assert all(f.cookie == COOKIE for f in switch.ours())


def test_a_restarted_vswitchd_is_reconnected_to_transparently(switch: Switch) -> None:
    """The session's connection dies with ovs-vswitchd; the next bundle goes over a new one
    (a restarted ovs-vswitchd has empty tables: the bundle is all there is)."""
    switch.clear()
    first = make_flow(20, 100, {"reg6": 1}, ["output:3"])
    switch.session.modify((first,), ())
    switch.inst.restart_vswitchd()
    deadline = time.monotonic() + 10
    while not (switch.inst.rundir / f"{BRIDGE}.mgmt").exists():
        assert time.monotonic() < deadline, "the new ovs-vswitchd has no mgmt socket"
        time.sleep(0.05)
    second = make_flow(20, 100, {"reg6": 2}, ["output:4"])
    switch.session.modify((second,), ())
    assert switch.ours() == {second}

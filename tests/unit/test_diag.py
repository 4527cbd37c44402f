"""Diagnostics on stateful fakes: facts each backend reports, the trace across two hosts (each
hop broken in turn names that hop), the cluster report, and the facts decoder (hypothesis)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.dataplane.fake_kernel import FakeKernel
from controller.dataplane.fake_ovs import FakeOvs
from controller.diag.cluster import cluster_report
from controller.diag.facts import NetworkFacts, decode_facts, encode_facts
from controller.diag.trace import resolve_endpoints, trace_path
from controller.model.errors import InvalidRecord, NotFound
from controller.model.flow import REG_VNI, make_canonical_flow
from controller.model.records import Endpoint, Host, HostStatus, Network
from controller.model.view import Snapshot, host_view
from controller.plan.flows import P_MATCH, T_L2
from controller.plan.kernel import endpoint_keys
from controller.plan.ovsdb import OvsLayout

BLUE = Network("blue", 42, "10.1.0.0/24")
A = Endpoint("a", "blue", "h1", "10.1.0.2", "02:2a:0a:01:00:02", "ns-a")
B = Endpoint("b", "blue", "h2", "10.1.0.3", "02:2a:0a:01:00:03", "ns-b")
C = Endpoint("c", "blue", "h1", "10.1.0.4", "02:2a:0a:01:00:04", "ns-c")


def snap(backend: str, alive: tuple[str, ...] = ("h1", "h2")) -> Snapshot:
    hosts = {h: Host(h, f"192.0.2.{i}", backend=backend) for i, h in ((1, "h1"), (2, "h2"))}  # type: ignore[arg-type]
    return Snapshot(
        revision=7,
        networks={"blue": BLUE},
        endpoints={(e.network, e.id): e for e in (A, B, C)},
        hosts=hosts,
        alive=frozenset(alive),
    )


def plane(backend: str, host: Host) -> Any:
    if backend == "ovs":
        layout = OvsLayout(datapath="netdev", underlay_dev="ul0")
        return FakeOvs(layout, host.vtep, nic_address=f"{host.vtep}/24")
    return FakeKernel(host.vtep)


def converged(backend: str) -> tuple[Snapshot, dict[str, Any]]:
    s = snap(backend)
    planes = {}
    for name, host in s.hosts.items():
        view = host_view(s, host)
        p = plane(backend, host)
        kernel = p.kernel if backend == "ovs" else p
        for netns, _ in endpoint_keys(view):
            kernel.add_netns(netns)
        p.apply(p.plan(view, p.observe(view)))
        assert p.plan(view, p.observe(view)) == ()
        planes[name] = p
    return s, planes


def facts(s: Snapshot, planes: dict[str, Any], host: str) -> NetworkFacts:
    view = host_view(s, s.hosts[host])
    p = planes[host]
    got = p.facts(view, "blue", p.observe(view))
    assert got is not None
    return got  # type: ignore[no-any-return]


def run(s: Snapshot, planes: dict[str, Any], src: Endpoint = A, dst: Endpoint = B) -> Any:
    return trace_path(s, src, dst, facts(s, planes, src.host), facts(s, planes, dst.host))


BACKENDS = pytest.mark.parametrize("backend", ["kernel", "ovs"])


@BACKENDS
def test_a_converged_path_is_whole_across_hosts_and_on_one_host(backend: str) -> None:
    s, planes = converged(backend)
    report = run(s, planes)
    assert report.whole, report.hops
    assert [h.name for h in report.hops][-1] == "destination address"
    local = run(s, planes, A, C)
    assert local.whole and "forwarding entry" not in [h.name for h in local.hops]


@BACKENDS
def test_facts_survive_their_json_form(backend: str) -> None:
    s, planes = converged(backend)
    f = facts(s, planes, "h1")
    assert decode_facts(encode_facts(f)) == f


@BACKENDS
def test_a_missing_forwarding_entry_is_the_first_bad_hop(backend: str) -> None:
    s, planes = converged(backend)
    if backend == "ovs":
        flow = make_canonical_flow(T_L2, P_MATCH, {REG_VNI: BLUE.vni, "dl_dst": B.mac}, [])
        br = planes["h1"].layout.bridge
        victim = next(f for f in planes["h1"].flows(br) if f.key == flow.key)
        planes["h1"].del_flow(br, victim)
    else:
        planes["h1"].drop_fdb("hdx2a", B.mac, s.hosts["h2"].vtep)
    bad = run(s, planes).first_bad
    assert bad is not None and (bad.name, bad.host) == ("forwarding entry", "h1")


def test_each_broken_hop_is_named_first() -> None:
    s, planes = converged("kernel")
    src, dst = facts(s, planes, "h1"), facts(s, planes, "h2")
    sa, db = src.endpoint("a"), dst.endpoint("b")
    assert sa is not None and db is not None

    def src_ep(**kw: Any) -> tuple[NetworkFacts, NetworkFacts]:
        return replace(src, endpoints=(replace(sa, **kw),)), dst

    def dst_ep(**kw: Any) -> tuple[NetworkFacts, NetworkFacts]:
        return src, replace(dst, endpoints=(replace(db, **kw),))

    cases = {
        "source address": src_ep(side=replace(sa.side, mtu=1300)),
        "source veth": src_ep(veth=replace(sa.veth, up=False)),
        "source tunnel": (replace(src, tunnel=replace(src.tunnel, present=False)), dst),
        "destination accepts VNI": (src, replace(dst, accepts=("198.51.100.9",))),
        "destination bridge": (src, replace(dst, bridge=replace(dst.bridge, up=False))),
        "destination veth": dst_ep(delivers=False),
        "destination address": dst_ep(side=replace(db.side, addresses=())),
    }
    for hop, (sf, df) in cases.items():
        bad = trace_path(s, A, B, sf, df).first_bad
        assert bad is not None and bad.name == hop, (hop, bad)
    bad = trace_path(s, A, B, "connection refused", dst).first_bad
    assert bad is not None and bad.name == "source host" and "refused" in bad.evidence
    bad = trace_path(s, A, B, src, "connection refused").first_bad
    assert bad is not None and bad.name == "destination host"
    dead = snap("kernel", alive=("h1",))
    bad = trace_path(dead, A, B, src, "connection refused").first_bad
    assert bad is not None and bad.name == "destination VTEP" and "not alive" in bad.evidence


def test_endpoints_are_resolved_by_id_or_address_and_refused_clearly() -> None:
    s = snap("kernel")
    assert resolve_endpoints(s, "blue", "a", "10.1.0.3") == (A, B)
    assert resolve_endpoints(s, "blue", "10.1.0.2", "10.1.0.3") == (A, B)
    with pytest.raises(NotFound, match="no network"):
        resolve_endpoints(s, "red", "a", "10.1.0.3")
    with pytest.raises(NotFound, match="no endpoint has address"):
        resolve_endpoints(s, "blue", "a", "10.1.0.99")
    with pytest.raises(InvalidRecord, match="not an address"):
        resolve_endpoints(s, "blue", "a", "bee")


def test_cluster_report_is_healthy_only_when_everything_is() -> None:
    s = snap("kernel")
    ok = {h: HostStatus(h, 7, 1000.0, True) for h in ("h1", "h2")}
    report = cluster_report(s, ok, now=1010.0)
    assert report.healthy and report.networks[0].endpoints == {"h1": 2, "h2": 1}
    failed = {**ok, "h2": HostStatus("h2", 5, 1000.0, False, errors=("EnsureVeth: boom",))}
    report = cluster_report(s, failed, now=1010.0, desired_revision=7)
    assert not report.healthy and report.hosts[1].revision_lag == 2
    assert report.problems == ("host h2: last pass failed: EnsureVeth: boom",)
    assert not cluster_report(s, ok, now=2000.0).healthy  # stale
    assert not cluster_report(snap("kernel", alive=("h1",)), ok, now=1010.0).healthy
    assert not cluster_report(replace(s, skipped=("k: bad",)), ok, now=1010.0).healthy
    assert not cluster_report(s, {"h1": ok["h1"]}, now=1010.0).healthy  # no status


SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(JSON)
def test_the_facts_decoder_is_total(value: object) -> None:
    with contextlib.suppress(InvalidRecord):
        decode_facts(json.dumps(value))


@given(st.sampled_from(["host", "vni", "bridge", "endpoints", "accepts", "forwarding"]), JSON)
def test_a_facts_answer_with_one_field_replaced_decodes_or_is_refused(
    key: str, value: object
) -> None:
    s, planes = converged_kernel()
    obj = json.loads(encode_facts(facts(s, planes, "h1")))
    obj[key] = value
    with contextlib.suppress(InvalidRecord):
        decode_facts(json.dumps(obj))


_CONVERGED: dict[str, tuple[Snapshot, dict[str, Any]]] = {}


def converged_kernel() -> tuple[Snapshot, dict[str, Any]]:
    if "k" not in _CONVERGED:
        _CONVERGED["k"] = converged("kernel")
    return _CONVERGED["k"]


def test_a_dual_stack_trace_checks_the_family_asked_for() -> None:
    """``heddle trace`` to an IPv6 address checks each side's IPv6 address; an endpoint is
    found by either of its addresses (written in any spelling of it)."""
    net = Network("ds", 7, "10.1.0.0/24", subnet6="fd00:1::/64")
    a = Endpoint("a", "ds", "h1", "10.1.0.2", "02:07:0a:01:00:02", "nsa", ip6="fd00:1::2")
    b = Endpoint("b", "ds", "h2", "10.1.0.3", "02:07:0a:01:00:03", "nsb", ip6="fd00:1::3")
    hosts = {h: Host(h, f"192.0.2.{i}") for i, h in ((1, "h1"), (2, "h2"))}
    s = Snapshot(1, {"ds": net}, {("ds", "a"): a, ("ds", "b"): b}, hosts, frozenset(hosts))
    assert resolve_endpoints(s, "ds", "FD00:1::2", "fd00:1:0::3") == (a, b)
    planes = {}
    for name, host in hosts.items():
        view = host_view(s, host)
        fk = FakeKernel(host.vtep)
        for netns, _ in endpoint_keys(view):
            fk.add_netns(netns)
        fk.apply(fk.plan(view, fk.observe(view)))
        planes[name] = fk

    def facts_of(host: str) -> NetworkFacts:
        view = host_view(s, hosts[host])
        got = planes[host].facts(view, "ds", planes[host].observe(view))
        assert got is not None
        return got

    report = trace_path(s, a, b, facts_of("h1"), facts_of("h2"), six=True)
    assert report.whole, [h for h in report.hops if h.status != "ok"]
    evidence = " ".join(h.evidence for h in report.hops)
    assert "fd00:1::3 on-link via fd00:1::2/64" in evidence

"""Egress (``--egress masquerade``): the record, which networks get it on a host and why not,
and what the kernel planner makes of it, on the stateful fake.

On the real kernel: tests/integration/test_kernel_dataplane.py (the contract test has an
egress step); through a lab to an outside server: tests/e2e/test_egress.py.
"""

from __future__ import annotations

import json

import pytest

from controller.dataplane.fake_kernel import FakeKernel
from controller.desired import DesiredState
from controller.model import codec
from controller.model.egress import Gateway, egress_gateways
from controller.model.errors import InvalidRecord
from controller.model.naming import bridge_name, derive_mac
from controller.model.nft_filter import render_sync
from controller.model.records import Endpoint, Host, Network
from controller.model.view import Snapshot, host_view
from controller.plan.kernel import plan_kernel
from controller.plan.kernel_ops import EnableForwarding, EnsureBridge, SyncFilters
from controller.store import keys
from controller.store.memory import MemoryKV

H1 = Host("h1", "192.0.2.1")
OUT = Network("out", 10, "10.10.0.0/24", "10.10.0.1", egress="masquerade")


def test_egress_needs_a_gateway_and_a_known_mode() -> None:
    with pytest.raises(InvalidRecord, match="needs a gateway"):
        Network("n", 1, "10.0.0.0/24", egress="masquerade")
    with pytest.raises(InvalidRecord, match="must be one of"):
        Network("n", 1, "10.0.0.0/24", "10.0.0.1", egress="nat")


def test_the_field_is_written_only_when_set() -> None:
    assert codec.decode_network(codec.encode_network(OUT)) == OUT
    plain = Network("n", 1, "10.0.0.0/24")
    assert "egress" not in json.loads(codec.encode_network(plain))


def test_create_with_egress_picks_the_first_address_as_gateway() -> None:
    kv = MemoryKV()
    net = DesiredState(kv).create_network("web", "10.9.0.0/24", egress="masquerade")
    assert (net.gateway, net.egress) == ("10.9.0.1", "masquerade")
    stored = kv.get(keys.network("web"))
    assert stored is not None and codec.decode_network(stored.value) == net


def test_overlapping_egress_subnets_and_the_ovs_backend_are_refused_with_a_reason() -> None:
    twin = Network("twin", 11, "10.10.0.0/25", "10.10.0.100", egress="masquerade")
    plain = Network("plain", 12, "10.10.0.0/24")  # overlaps, but routes nothing: no matter
    gws, why = egress_gateways([twin, OUT, plain], "kernel")
    assert gws == (Gateway(10, "10.10.0.0/24", "10.10.0.1", 24),)
    assert why == ("network twin: egress refused on this host: subnet 10.10.0.0/25 overlaps "
                   "egress network out's",)  # fmt: skip
    gws, why = egress_gateways([OUT], "ovs")
    assert gws == () and "not provided by the ovs backend" in why[0]


def snapshot(net: Network) -> Snapshot:
    eps = {
        ("out", "a"): Endpoint("a", "out", "h1", "10.10.0.2", "02:0a:0a:0a:00:02", "ns-a"),
        ("out", "b"): Endpoint("b", "out", "h2", "10.10.0.3", "02:0a:0a:0a:00:03"),
    }
    hosts = {"h1": H1, "h2": Host("h2", "192.0.2.2")}
    return Snapshot(1, {"out": net}, eps, hosts)


def test_the_host_view_reports_the_refusal() -> None:
    view = host_view(snapshot(OUT), Host("h1", "192.0.2.1", backend="ovs"))
    assert any("egress masquerade is not provided" in p for p in view.problems)
    assert host_view(snapshot(OUT), H1).problems == ()


def test_the_planner_puts_the_gateway_on_the_bridge_turns_forwarding_on_and_back() -> None:
    fake = FakeKernel(H1.vtep, netns=("ns-a",))
    view = host_view(snapshot(OUT), H1)
    ops = plan_kernel(view, fake.observe(view))
    (bridge,) = [op for op in ops if isinstance(op, EnsureBridge)]
    assert bridge == EnsureBridge(bridge_name(10), 1450, derive_mac(10, "10.10.0.1"),
                                  ("10.10.0.1/24",))  # fmt: skip
    assert EnableForwarding() in ops
    sync = next(op for op in ops if isinstance(op, SyncFilters))
    assert sync.spec.gateways == (Gateway(10, "10.10.0.0/24", "10.10.0.1", 24),)
    fake.apply(ops)
    assert plan_kernel(view, fake.observe(view)) == ()
    # egress off again: the address goes, forwarding stays (other things may route)
    plain = host_view(snapshot(Network("out", 10, "10.10.0.0/24", "10.10.0.1")), H1)
    ops = plan_kernel(plain, fake.observe(plain))
    assert EnsureBridge(bridge_name(10), 1450, None, ()) in ops and EnableForwarding() not in ops
    fake.apply(ops)
    assert plan_kernel(plain, fake.observe(plain)) == () and fake.forwarding


def test_the_rules_masquerade_only_the_egress_networks_subnet_from_its_bridge() -> None:
    view = host_view(snapshot(OUT), H1)
    sync = next(op for op in plan_kernel(view, FakeKernel().observe(view))
                if isinstance(op, SyncFilters))  # fmt: skip
    batch = json.dumps(render_sync(sync.spec))
    assert '"masquerade": null' in batch and '"addr": "10.10.0.0", "len": 24' in batch
    assert f'"elem": [{{"concat": ["{bridge_name(10)}", "10.10.0.1"]}}]' in batch

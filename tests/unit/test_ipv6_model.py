"""IPv6 and dual-stack networks from the records to the kernel plan: the schema's new fields
(and that an IPv4 record reads and encodes as before), IPAM per family in one transaction, the
host view's refusals, the planner's addresses, neighbour entries and guards, and the CLI's and
CNI's handling of both families."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller import allocation, ipam
from controller.cli.records import by_family
from controller.cni import spec as cni_spec
from controller.desired import DesiredState
from controller.model import codec
from controller.model.errors import InvalidRecord
from controller.model.kernel_state import KernelState
from controller.model.naming import derive_mac, veth_host_name, vxlan_name
from controller.model.nft_filter import make_spec, render_sync
from controller.model.nft_guards import PortGuard, guard_rules
from controller.model.nft_parse import parse_tables
from controller.model.records import Endpoint, Host, Network, check_vtep
from controller.model.view import Snapshot, host_view
from controller.plan.kernel import plan_kernel
from controller.plan.kernel_ops import ConfigureEndpoint, PutNeigh
from controller.store import keys
from controller.store.kv import Put, Txn
from controller.store.memory import MemoryKV

DUAL = Network("ds", 0x71, "10.30.0.0/24", "10.30.0.1", subnet6="fd00:30::/64",
               gateway6="fd00:30::1")  # fmt: skip
ONLY6 = Network("six", 0x72, None, subnet6="fd00:31::/64")
H1, H2 = Host("h1", "192.0.2.1"), Host("h2", "192.0.2.2")


# -- records and codec --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"subnet": None}, "needs a subnet"),
        ({"subnet": None, "subnet6": "fd00::/64", "gateway": "10.0.0.1"}, "no IPv4 subnet"),
        ({"subnet6": "FD00::/64"}, "canonically, as fd00::/64"),
        ({"subnet6": "fd00::1/64"}, "not a valid IPv6 CIDR"),
        ({"subnet6": "fe80::/64"}, "link-local"),
        ({"subnet6": "ff02::/64"}, "multicast"),
        ({"subnet6": "fd00::/16"}, "/32../124"),
        ({"subnet6": "fd00::/64", "gateway6": "fd01::1"}, "not a usable address"),
        ({"gateway6": "fd00::1"}, "needs subnet6"),
        ({"subnet6": "fd00::/64", "mtu": 1200}, "mtu 1200 must be an integer in 1280"),
    ],
)
def test_network_records_refuse_what_ipv6_cannot_carry(kwargs: dict[str, object], why: str) -> None:
    fields: dict[str, object] = {"name": "n", "vni": 1, "subnet": "10.0.0.0/24", **kwargs}
    with pytest.raises(InvalidRecord, match=why):
        Network(**fields)  # type: ignore[arg-type]


def test_endpoints_need_an_address_written_canonically() -> None:
    with pytest.raises(InvalidRecord, match="needs an address"):
        Endpoint("e", "n", "h1", None, "02:00:00:00:00:01")
    with pytest.raises(InvalidRecord, match="canonically, as fd00::1"):
        Endpoint("e", "n", "h1", None, "02:00:00:00:00:01", ip6="fd00:0::1")
    ep = Endpoint("e", "n", "h1", "10.0.0.2", "02:00:00:00:00:01", ip6="fd00::2")
    assert ep.addresses == ("10.0.0.2", "fd00::2") and ep.address == "10.0.0.2"


def test_an_ipv4_record_encodes_as_before_and_new_fields_only_when_set() -> None:
    """An agent that predates the IPv6 fields refuses unknown fields: an IPv4 network or
    endpoint must reach it byte for byte as before."""
    net = Network("blue", 7, "10.1.0.0/24", "10.1.0.1")
    assert json.loads(codec.encode_network(net)) == {
        "name": "blue", "vni": 7, "subnet": "10.1.0.0/24", "gateway": "10.1.0.1", "mtu": None,
    }  # fmt: skip
    ep = Endpoint("a", "blue", "h1", "10.1.0.2", "02:07:0a:01:00:02")
    assert set(json.loads(codec.encode_endpoint(ep))) == {
        "id", "network", "host", "ip", "mac", "netns", "ifname",
    }  # fmt: skip
    six = json.loads(codec.encode_network(ONLY6))
    assert "subnet" not in six and six["subnet6"] == "fd00:31::/64"
    for n in (DUAL, ONLY6):
        assert codec.decode_network(codec.encode_network(n)) == n


FOUR = st.integers(1, 2**24 - 2).map(lambda i: str(ipaddress.IPv4Address(0x0A000000 + i)))
SIX = st.integers(1, 2**64 - 1).map(lambda i: str(ipaddress.IPv6Address((0xFD << 120) + i)))


@given(four=st.none() | FOUR, six=st.none() | SIX)
def test_endpoint_codec_round_trips_any_family_mix(four: str | None, six: str | None) -> None:
    obj = {"id": "e", "network": "n", "host": "h1", "mac": "02:00:00:00:00:01"}
    obj |= ({"ip": four} if four else {}) | ({"ip6": six} if six else {})
    raw = json.dumps(obj)
    if four is None and six is None:
        with pytest.raises(InvalidRecord, match="needs an address"):
            codec.decode_endpoint(raw)
        return
    ep = codec.decode_endpoint(raw)
    assert (ep.ip, ep.ip6) == (four, six)
    assert codec.decode_endpoint(codec.encode_endpoint(ep)) == ep


def test_a_dual_stack_mac_derives_from_ipv4_and_an_ipv6_only_one_from_the_low_bits() -> None:
    assert derive_mac(0x71, "10.30.0.2") == "02:71:0a:1e:00:02"
    assert derive_mac(0x72, "fd00:31::1:2") == "02:72:00:01:00:02"


# -- IPAM ---------------------------------------------------------------------------------


def _registered(kv: MemoryKV) -> DesiredState:
    kv.commit(Txn(success=(Put(keys.host("h1"), codec.encode_host(H1).encode()),)))
    return DesiredState(kv)


def test_a_dual_stack_endpoint_claims_one_address_per_family_in_one_transaction() -> None:
    kv = MemoryKV()
    ds = _registered(kv)
    ds.create_network("ds", "10.30.0.0/29", subnet6="fd00:30::/64", gateway6="fd00:30::1")
    a, b = ds.create_endpoint("ds", "h1"), ds.create_endpoint("ds", "h1")
    assert (a.ip, a.ip6, b.ip, b.ip6) == ("10.30.0.1", "fd00:30::2", "10.30.0.2", "fd00:30::3")
    assert a.mac == derive_mac(1, "10.30.0.1")  # the lowest free VNI, from the IPv4 address
    for ip in (*a.addresses, *b.addresses):
        owner = kv.get(keys.ipam("ds", ip))
        assert owner is not None and codec.decode_owner(owner.value) in (a.id, b.id)
    ds.remove_endpoint("ds", a.id)
    assert (
        kv.get(keys.ipam("ds", "fd00:30::2")) is None
        and kv.get(keys.ipam("ds", "10.30.0.1")) is None
    )
    c = ds.create_endpoint("ds", "h1")
    assert c.addresses == ("10.30.0.1", "fd00:30::2")  # released by this allocator: reused first


def test_the_smallest_family_exhausts_a_dual_stack_pool() -> None:
    kv = MemoryKV()
    ds = _registered(kv)
    net = ds.create_network("tiny", "10.31.0.0/30", subnet6="fd00:32::/120")
    assert ipam.pool_size(net) == 2
    ds.create_endpoint("tiny", "h1")
    ds.create_endpoint("tiny", "h1")
    with pytest.raises(Exception, match="no free address"):
        ds.create_endpoint("tiny", "h1")


def test_requested_addresses_cover_every_family_and_are_checked() -> None:
    kv = MemoryKV()
    ds = _registered(kv)
    ds.create_network("ds", "10.30.0.0/24", subnet6="fd00:30::/64", gateway6="fd00:30::1")
    with pytest.raises(InvalidRecord, match="request an address of each family"):
        ds.create_endpoint("ds", "h1", ip="10.30.0.9")
    with pytest.raises(InvalidRecord, match="is the gateway"):
        ds.create_endpoint("ds", "h1", ip="10.30.0.9", ip6="fd00:30::1")
    with pytest.raises(InvalidRecord, match="outside subnet"):
        ds.create_endpoint("ds", "h1", ip="10.30.0.9", ip6="fd00:99::1")
    ep = ds.create_endpoint("ds", "h1", ip="10.30.0.9", ip6="fd00:30::9")
    assert ep.addresses == ("10.30.0.9", "fd00:30::9")
    ds.create_network("six", None, subnet6="fd00:31::/64")
    with pytest.raises(InvalidRecord, match="no such subnet"):
        ds.create_endpoint("six", "h1", ip="10.30.0.10")
    with pytest.raises(InvalidRecord, match="beyond the first"):
        ds.create_endpoint("six", "h1", ip6="fd00:31::1:0:1")


def test_an_ipv6_only_pool_starts_at_one_and_is_capped_at_2_to_the_32() -> None:
    lo, hi, gw = ipam.span(ONLY6, True)
    assert ipam.text(lo, True) == "fd00:31::1" and hi - lo + 1 == ipam.V6_POOL and gw is None
    assert allocation.taken(MemoryKV(), ONLY6) == set()


# -- the host view and the plan -----------------------------------------------------------


def _snap(*eps: Endpoint, nets: tuple[Network, ...] = (DUAL, ONLY6)) -> Snapshot:
    return Snapshot(1, {n.name: n for n in nets}, {(e.network, e.id): e for e in eps},
                    {h.name: h for h in (H1, H2)})  # fmt: skip


def test_the_view_reports_endpoints_whose_families_do_not_fit_their_network() -> None:
    eps = (
        Endpoint("a", "ds", "h1", "10.30.0.2", "02:71:0a:1e:00:02", "ns", ip6="fd00:30::2"),
        Endpoint("b", "ds", "h2", "10.30.0.3", "02:71:0a:1e:00:03"),  # lacks IPv6
        Endpoint("c", "ds", "h2", "10.30.0.4", "02:71:0a:1e:00:04", ip6="fd00:99::4"),
        Endpoint("d", "six", "h1", "10.31.0.2", "02:72:0a:1f:00:02", "ns2"),  # IPv4 in IPv6-only
    )
    v = host_view(_snap(*eps), H1)
    assert [nv.network.name for nv in v.networks] == ["ds"]
    assert v.problems == (
        "endpoint ds/b: no IPv6 address, and the network has subnet fd00:30::/64",
        "endpoint ds/c: fd00:99::4 is outside fd00:30::/64",
        "endpoint six/d: 10.31.0.2 is an IPv4 address and the network has no IPv4 subnet",
    )


def test_small_underlays_refuse_ipv6_networks_with_a_reason_and_ovs_hosts_carry_them() -> None:
    ep = Endpoint("a", "six", "h1", None, "02:72:00:00:00:02", "ns", ip6="fd00:31::2")
    ovs = host_view(_snap(ep), Host("h1", "192.0.2.1", backend="ovs"))
    assert [nv.network.name for nv in ovs.networks] == ["six"] and not ovs.problems
    small = host_view(_snap(ep), Host("h1", "192.0.2.1", underlay_mtu=1300))
    assert not small.networks and "below IPv6's 1280" in small.problems[0]


def test_the_plan_gives_addresses_routes_neighbours_and_guards_of_both_families() -> None:
    eps = (
        Endpoint("a", "ds", "h1", "10.30.0.2", "02:71:0a:1e:00:02", "ns", ip6="fd00:30::2"),
        Endpoint("b", "ds", "h2", "10.30.0.3", "02:71:0a:1e:00:03", ip6="fd00:30::3"),
    )
    v = host_view(_snap(*eps), H1)
    ops = plan_kernel(v, KernelState())
    [conf] = [op for op in ops if isinstance(op, ConfigureEndpoint)]
    assert conf.addresses == ("10.30.0.2/24", "fd00:30::2/64")
    assert conf.gateways == ("10.30.0.1", "fd00:30::1")
    neigh = {(op.ip, op.mac) for op in ops if isinstance(op, PutNeigh)}
    assert neigh == {("10.30.0.3", "02:71:0a:1e:00:03"), ("fd00:30::3", "02:71:0a:1e:00:03")}
    assert all(op.dev == vxlan_name(0x71) for op in ops if isinstance(op, PutNeigh))


# -- filters ------------------------------------------------------------------------------

G4 = PortGuard("hdv1", "02:00:00:00:00:01", "10.0.0.1")
G6 = PortGuard("hdv1", "02:00:00:00:00:01", "fd00::1")


def test_an_ipv6_guard_admits_its_own_address_and_adverts_only_for_it() -> None:
    rules = guard_rules([G4, G6])
    text = json.dumps(rules)
    assert '"0xfd000000000000000000000000000001"' in text  # the target, as @th,64,128 reads
    six = [r for r in rules if "ip6" in json.dumps(r[:2])]
    assert len(six) == 3  # non-ICMPv6, ICMPv6 but routers' and queriers', its own adverts
    assert all(r[-1] == {"accept": None} for r in six)
    assert rules[-1] == [{"counter": "spoof_dropped"}, {"drop": None}]


def test_a_listing_without_the_ipv6_rules_is_rewritten() -> None:
    """No table ``inet heddle``: the planner sees no spec and writes it in one batch."""
    assert parse_tables([]).spec is None


# -- CLI and CNI --------------------------------------------------------------------------


def test_repeated_flags_split_by_family() -> None:
    assert by_family(["10.0.0.0/24", "fd00::/64"], "subnet") == ("10.0.0.0/24", "fd00::/64")
    assert by_family(["fd00::/64"], "subnet") == (None, "fd00::/64")
    assert by_family(None, "ip") == (None, None)
    with pytest.raises(InvalidRecord, match="at most one IPv4 and one IPv6"):
        by_family(["10.0.0.0/24", "10.1.0.0/24"], "subnet")


def test_a_cni_result_lists_both_addresses_and_a_default_route_per_gateway() -> None:
    both = [("10.30.0.2/24", "10.30.0.1"), ("fd00:30::2/64", "fd00:30::1")]
    res = cni_spec.add_result("eth0", "02:71:0a:1e:00:02", "/run/netns/x", both)
    assert [ip["address"] for ip in res["ips"]] == ["10.30.0.2/24", "fd00:30::2/64"]
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.30.0.1"},
                             {"dst": "::/0", "gw": "fd00:30::1"}]  # fmt: skip
    assert veth_host_name("ds", "a").startswith("hdv")


# -- IPv6 underlay ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vtep", "why"),
    [
        ("::1", "loopback"),
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
        ("::ffff:c000:201", "IPv4-mapped"),
        ("fe80::1", "link-local"),
        ("FD00::1", "canonically"),
    ],
)
def test_ipv6_vteps_must_be_usable_unicast(vtep: str, why: str) -> None:
    with pytest.raises(InvalidRecord, match=why):
        check_vtep(vtep)
    assert check_vtep("fe80::1", allow_link_local=True) == "fe80::1"
    assert Host("h1", "fd00:ff::1").vtep == "fd00:ff::1"


def test_ipv6_vteps_cost_70_bytes_and_a_network_may_not_mix_families() -> None:
    h6 = (Host("h1", "fd00:ff::1"), Host("h2", "fd00:ff::2"))
    ep_a = Endpoint("a", "ds", "h1", "10.30.0.2", "02:71:0a:1e:00:02", "ns", ip6="fd00:30::2")
    ep_b = Endpoint("b", "ds", "h2", "10.30.0.3", "02:71:0a:1e:00:03", ip6="fd00:30::3")
    snap6 = Snapshot(1, {"ds": DUAL}, {("ds", "a"): ep_a, ("ds", "b"): ep_b},
                     {h.name: h for h in h6})  # fmt: skip
    [nv] = host_view(snap6, h6[0]).networks
    assert nv.mtu == 1430 and nv.flood == ("fd00:ff::2",)
    mixed = Snapshot(1, {"ds": DUAL}, {("ds", "a"): ep_a, ("ds", "b"): ep_b},
                     {"h1": h6[0], "h2": H2})  # fmt: skip
    v = host_view(mixed, h6[0])
    assert not v.networks
    assert v.problems == (
        "network ds: its hosts' VTEPs mix IPv4 and IPv6 (h1 fd00:ff::1, h2 192.0.2.2): one "
        "family per network; not built",
    )


def test_members_over_both_families_are_two_rules_that_read_back() -> None:
    spec = make_spec({7: ["192.0.2.2", "fd00:ff::2"], 9: ["fd00:ff::3"]})
    batch = render_sync(spec)["nftables"]
    text = json.dumps(batch)
    assert '"protocol": "ip6", "field": "saddr"' in text and '"protocol": "ip", "field"' in text
    objects = []
    for cmd in batch:  # what a listing shows after the batch, enough for the parser
        gone = cmd.get("delete", {}).get("chain")
        if gone is not None:
            objects = [o for o in objects if o.get("chain", {}).get("name") != gone["name"]]
        body = cmd.get("add", {})
        for kind in ("table", "set", "map", "rule", "chain", "counter"):
            if kind in body:
                objects.append({kind: dict(body[kind])})
        if "element" in body:
            el = body["element"]
            for o in objects:
                for kind in ("set", "map"):
                    if kind in o and (o[kind]["name"], o[kind]["family"]) == (
                        el["name"],
                        el["family"],
                    ):
                        o[kind].setdefault("elem", []).extend(el["elem"])
    assert parse_tables(objects).spec == spec

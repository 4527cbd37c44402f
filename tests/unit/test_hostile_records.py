"""What a careless or hostile etcd client can write, and what heddle does with it.

Decoders are total (only ``InvalidRecord`` comes out, whatever the bytes), messages and status
stay bounded, the cache always advances, and conflicting valid records are resolved the same way
on every host: the older record wins. Property-based where the input is open-ended.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.model import codec
from controller.model.conflicts import (
    decide_networks,
    resolve,
    resolve_apart,
    resolve_network,
)
from controller.model.errors import InvalidRecord
from controller.model.json_value import MAX_RECORD_BYTES, load_object
from controller.model.records import Alive, Endpoint, Host, Network, check_vtep, parse_subnet
from controller.model.view import Snapshot, host_view
from controller.reconcile.loop import PassResult
from controller.reconcile.status import StatusWriter
from controller.store import keys
from controller.store.cache import Cache
from controller.store.kv import Event, KeyValue, Listing, WatchBatch
from controller.store.memory import MemoryKV

DECODERS: dict[str, Callable[[bytes], object]] = {
    "network": codec.decode_network,
    "endpoint": codec.decode_endpoint,
    "host": codec.decode_host,
    "alive": codec.decode_alive,
    "status": codec.decode_status,
}
DEEP = b"[" * 5000 + b"]" * 5000
HUGE_NAME = json.dumps({"name": "x" * 1_000_000, "vni": 1, "subnet": "10.0.0.0/24"}).encode()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)
FIELDS = ["name", "vni", "subnet", "gateway", "mtu", "id", "network", "host", "ip", "mac", "netns",
          "ifname", "vtep", "underlay_mtu", "backend", "version", "since", "pid", "revision",
          "last_pass", "ok", "changes", "errors", "skipped", "skipped_count", "stuck", "subnet6",
          "gateway6", "ip6"]  # fmt: skip
record_like = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=10)


def _only_invalid(decode: Callable[[bytes], object], raw: bytes) -> None:
    try:
        decode(raw)
    except InvalidRecord as exc:
        assert len(str(exc)) < 400, "a rejection must quote a bounded prefix only"


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_give_only_invalid_record(name: str, raw: bytes) -> None:
    _only_invalid(DECODERS[name], raw)


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=300, deadline=None)
@given(obj=record_like | json_values)
def test_arbitrary_json_gives_only_invalid_record(name: str, obj: Any) -> None:
    _only_invalid(DECODERS[name], json.dumps(obj).encode())


endpoint_like = st.fixed_dictionaries(
    {"id": st.just("e1"), "network": st.just("blue"), "host": st.sampled_from(["h1", "h2", ""]),
     "mac": st.just("02:00:00:00:00:05"), "ip": st.just("10.1.0.5")},
    optional={"netns": st.none() | st.sampled_from(["c1", "/run/netns/c1", "", "a b"]),
              "ifname": st.none() | st.sampled_from(["eth0", "net1", "", "x" * 16])},
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    raw=st.binary(max_size=300)
    | (record_like | json_values | endpoint_like).map(lambda o: json.dumps(o).encode())
)
def test_the_interface_peek_never_raises_and_never_misses_a_valid_record(raw: bytes) -> None:
    """``endpoint_interface`` is how a writer skips the records that cannot clash: it must
    name the same interface as the full decode of every record the agents would accept."""
    peek = codec.endpoint_interface(raw)
    try:
        ep = codec.decode_endpoint(raw)
    except InvalidRecord:
        return
    assert peek == (ep.host, ep.netns, ep.ifname)


@settings(max_examples=200, deadline=None)
@given(
    raw=st.binary(max_size=200)
    | (record_like | json_values | endpoint_like).map(lambda o: json.dumps(o).encode())
)
def test_a_placement_value_never_raises_and_says_an_interface_or_nothing(raw: bytes) -> None:
    says = codec.decode_placement(raw)
    assert says is None or (
        (says[0] is None or isinstance(says[0], str)) and isinstance(says[1], str)
    )


@given(
    netns=st.none() | st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}", fullmatch=True),
    ifname=st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True),
)
def test_a_placement_value_names_its_endpoints_interface(netns: str | None, ifname: str) -> None:
    ep = Endpoint("e1", "blue", "h1", "10.1.0.5", "02:00:00:00:00:05", netns, ifname)
    assert codec.decode_placement(codec.encode_placement(ep)) == (netns, ifname)
    assert codec.decode_placement(b"") is None  # what older writers leave: read the record


def test_the_interface_peek_of_written_records() -> None:
    ep = Endpoint("e1", "blue", "h1", "10.1.0.5", "02:00:00:00:00:05", netns="c1", ifname="net1")
    assert codec.endpoint_interface(codec.encode_endpoint(ep)) == ("h1", "c1", "net1")
    docker = replace(ep, netns=None, ifname="eth0")
    assert codec.endpoint_interface(codec.encode_endpoint(docker)) == ("h1", None, "eth0")
    assert codec.endpoint_interface(b"[1]") is None
    assert codec.endpoint_interface(DEEP) is None


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize(
    "raw",
    [
        DEEP,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        HUGE_NAME,
        b'{"revision": 1e400, "host": "h1", "last_pass": 1, "ok": true}',
        b'{"since": NaN, "pid": 1}',
        b'{"name": "h1", "vtep": "10.0.0.1", "underlay_mtu": ' + b"9" * 5000 + b"}",
        b"\xff\xfe\x00{",
    ],
    ids=["deep-list", "deep-object", "1MB", "1e400", "NaN", "5000-digit", "not-utf8"],
)
def test_known_killers_are_invalid_records(name: str, raw: bytes) -> None:
    with pytest.raises(InvalidRecord) as info:
        DECODERS[name](raw)
    assert len(str(info.value)) < 400


def test_a_large_value_costs_a_length_check_and_a_short_message() -> None:
    with pytest.raises(InvalidRecord, match=f"limit of {MAX_RECORD_BYTES}") as info:
        load_object(HUGE_NAME, "network")
    assert len(str(info.value)) < 100
    with pytest.raises(InvalidRecord) as info:
        codec.decode_network(json.dumps({"name": "y" * 5000, "vni": 1, "subnet": "10.0.0.0/24"}))
    assert len(str(info.value)) < 300 and "5002 characters" in str(info.value)


def test_owner_decoding_is_total() -> None:
    assert codec.decode_owner(b'"ep1"') == "ep1"
    assert codec.decode_owner(b"ep1") == "ep1"
    assert isinstance(codec.decode_owner(DEEP), str)
    assert len(codec.decode_owner(b"z" * 100_000)) <= 1024


# -- VTEPs and subnets ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "vtep",
    ["127.0.0.1", "224.0.0.1", "239.1.1.1", "0.0.0.0", "0.1.2.3", "255.255.255.255", "240.0.0.1"],
)
def test_unusable_vteps_are_refused(vtep: str) -> None:
    with pytest.raises(InvalidRecord, match="not a usable unicast VTEP"):
        check_vtep(vtep)
    with pytest.raises(InvalidRecord):
        codec.decode_host(json.dumps({"name": "h9", "vtep": vtep}))


def test_link_local_vtep_only_when_allowed() -> None:
    with pytest.raises(InvalidRecord, match="link-local"):
        check_vtep("169.254.1.1")
    assert check_vtep("169.254.1.1", allow_link_local=True) == "169.254.1.1"
    me = Host("h1", "192.0.2.1")
    ll = Host("h2", "169.254.7.7")
    net = Network("blue", 7, "10.1.0.0/24")
    eps = {
        ("blue", "a"): Endpoint("a", "blue", "h1", "10.1.0.1", "02:07:0a:01:00:01", "c1"),
        ("blue", "b"): Endpoint("b", "blue", "h2", "10.1.0.2", "02:07:0a:01:00:02", "c1"),
    }
    snap = Snapshot(1, {"blue": net}, eps, {"h1": me, "h2": ll})
    refused = host_view(snap, me)
    assert refused.networks[0].remote == () and "link-local VTEP" in refused.problems[0]
    allowed = host_view(snap, me, link_local_vteps=True)
    assert [r.vtep for r in allowed.networks[0].remote] == ["169.254.7.7"]


@pytest.mark.parametrize(
    ("subnet", "why"),
    [("0.0.0.0/0", "at least /8"), ("10.0.0.0/7", "at least /8"), ("127.0.0.0/24", "loopback"),
     ("224.1.0.0/16", "multicast"), ("240.0.0.0/24", "reserved"), ("0.0.0.0/24", "this network")],
)  # fmt: skip
def test_subnets_without_room_for_endpoints_are_refused(subnet: str, why: str) -> None:
    with pytest.raises(InvalidRecord, match=why):
        parse_subnet(subnet)


# -- conflicts: the older record wins ---------------------------------------------------------
def _ep(i: str, ip: str, mac: str, host: str = "h1", net: str = "blue", ns: str | None = None,
        ifname: str = "eth0") -> Endpoint:  # fmt: skip
    return Endpoint(i, net, host, ip, mac, ns, ifname)


def test_duplicate_address_mac_and_interface_lose_to_the_older_record() -> None:
    blue = Network("blue", 5, "10.1.0.0/24")
    eps = {
        ("blue", "old"): (10, _ep("old", "10.1.0.5", "02:05:0a:01:00:05", ns="c1")),
        ("blue", "ipdup"): (11, _ep("ipdup", "10.1.0.5", "02:05:0a:01:00:99", host="h2")),
        ("blue", "macdup"): (12, _ep("macdup", "10.1.0.6", "02:05:0a:01:00:05", host="h2")),
        ("blue", "nsdup"): (13, _ep("nsdup", "10.1.0.7", "02:05:0a:01:00:07", ns="c1")),
        ("blue", "fine"): (14, _ep("fine", "10.1.0.8", "02:05:0a:01:00:08", ns="c2")),
    }
    r = resolve({"blue": (1, blue)}, eps)
    assert sorted(r.endpoints) == [("blue", "fine"), ("blue", "old")]
    text = "\n".join(r.problems)
    assert "blue/ipdup: address 10.1.0.5 is taken by blue/old" in text
    assert "blue/macdup: MAC 02:05:0a:01:00:05 is taken by blue/old" in text
    assert "blue/nsdup: interface c1/eth0 on h1 is taken by blue/old" in text


def test_the_interface_claim_spans_networks_and_the_vni_claim_takes_endpoints_along() -> None:
    nets = {"blue": (1, Network("blue", 5, "10.1.0.0/24")),
            "copy": (2, Network("copy", 5, "10.9.0.0/24")),
            "red": (3, Network("red", 6, "10.1.0.0/24"))}  # fmt: skip
    eps = {
        ("blue", "a"): (4, _ep("a", "10.1.0.5", "02:05:0a:01:00:05", ns="c1")),
        ("copy", "b"): (5, _ep("b", "10.9.0.5", "02:05:0a:09:00:05", net="copy")),
        ("red", "c"): (6, _ep("c", "10.1.0.5", "02:05:0a:01:00:05", net="red", ns="c1")),
        ("red", "d"): (7, _ep("d", "10.1.0.5", "02:05:0a:01:00:05", net="red", ns="c2")),
    }
    r = resolve(nets, eps)
    assert sorted(r.networks) == ["blue", "red"]
    # same address and MAC as blue/a is fine in another network; the same netns/ifname is not
    assert sorted(r.endpoints) == [("blue", "a"), ("red", "d")]
    assert any("VNI 5 is taken by network blue" in p and "1 endpoint" in p for p in r.problems)


def test_ties_are_broken_by_key_and_a_loser_claims_nothing() -> None:
    net = {"blue": (1, Network("blue", 5, "10.1.0.0/24"))}
    eps = {  # one transaction: same create revision
        ("blue", "b"): (9, _ep("b", "10.1.0.5", "02:05:0a:01:00:05")),
        ("blue", "a"): (9, _ep("a", "10.1.0.5", "02:05:0a:01:00:06")),
        ("blue", "c"): (10, _ep("c", "10.1.0.6", "02:05:0a:01:00:05")),
    }
    r = resolve(net, eps)
    # a wins the address; b loses and so does not hold its MAC, which c may then take
    assert sorted(r.endpoints) == [("blue", "a"), ("blue", "c")]
    assert resolve(net, dict(reversed(list(eps.items())))) == r


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(1, 4), st.sampled_from("ab")),
        max_size=12,
    )
)
def test_resolution_is_conflict_free_and_independent_of_arrival_order(
    rows: list[tuple[int, int, int, str]],
) -> None:
    net = {"blue": (1, Network("blue", 5, "10.1.0.0/24"))}
    eps = {
        ("blue", f"e{i}"): (rev, _ep(f"e{i}", f"10.1.0.{ip}", f"02:05:0a:01:00:0{mac}", ns=ns))
        for i, (rev, ip, mac, ns) in enumerate(rows)
    }
    r = resolve(net, eps)
    won = list(r.endpoints.values())
    assert len({e.ip for e in won}) == len({e.mac for e in won}) == len(won)
    assert len({e.netns for e in won}) == len(won)
    assert len(won) + len(r.problems) == len(eps)
    assert resolve(net, dict(reversed(list(eps.items())))) == r


# -- the cache never stops --------------------------------------------------------------------
def _put(key: str, value: bytes, rev: int, created: int | None = None) -> Event:
    return Event("put", KeyValue(key, value, created or rev, rev))


def test_a_poisoned_batch_is_consumed_and_later_changes_apply() -> None:
    c = Cache()
    c.replace_all(Listing((), 1))
    good = Network("blue", 5, "10.1.0.0/24")
    c.apply(WatchBatch((_put(keys.network("deep"), DEEP, 2),
                        _put(keys.network("huge"), HUGE_NAME, 2)), 2))  # fmt: skip
    assert c.revision == 2
    c.apply(WatchBatch((_put(keys.network("blue"), codec.encode_network(good).encode(), 3),), 3))
    snap = c.snapshot()
    assert dict(snap.networks) == {"blue": good} and snap.revision == 3
    assert len(snap.skipped) == 2 and all(len(s) < 400 for s in snap.skipped)


def test_cache_resolves_conflicts_by_create_revision() -> None:
    c = Cache()
    a = Endpoint("a", "blue", "h1", "10.1.0.5", "02:05:0a:01:00:05")
    b = Endpoint("b", "blue", "h2", "10.1.0.5", "02:05:0a:01:00:06")
    c.replace_all(Listing((
        KeyValue(keys.endpoint("blue", "b"), codec.encode_endpoint(b).encode(), 7, 7),
        KeyValue(keys.endpoint("blue", "a"), codec.encode_endpoint(a).encode(), 3, 9),
    ), 9))  # fmt: skip
    assert list(c.snapshot().endpoints) == [("blue", "a")]  # created first, modified last
    c.apply(WatchBatch((Event("delete", KeyValue(keys.endpoint("blue", "a"), b"", 0, 10)),), 10))
    assert list(c.snapshot().endpoints) == [("blue", "b")]  # the claim passes on at once


# -- status stays small -----------------------------------------------------------------------
def test_status_is_bounded_whatever_is_skipped() -> None:
    kv = MemoryKV()
    problems = tuple(f"/heddle/v1/networks/bad{i}: network: {'x' * 500}" for i in range(1000))
    StatusWriter(kv, "h1", stuck=lambda: "not following etcd for 20 s: " + "y" * 5000)(
        PassResult(7, 1.0, 0.01, 0, True, "E" * 10_000, problems)
    )
    raw = kv.get(keys.status("h1"))
    assert raw is not None and len(raw.value) < 4096
    st_ = codec.decode_status(raw.value)
    assert st_.skipped_count == 1000 and len(st_.skipped) == 5
    assert st_.ok is False and st_.stuck is not None and st_.stuck.startswith("not following")


def test_status_of_an_older_agent_still_reads() -> None:
    old = {"host": "h1", "revision": 4, "last_pass": 1.5, "ok": True, "changes": 0,
           "errors": [], "skipped": ["a", "b", "c", "d", "e", "f", "g"]}  # fmt: skip
    st_ = codec.decode_status(json.dumps(old))
    assert st_.skipped_count == 7 and len(st_.skipped) == 5 and st_.stuck is None


# -- host ls and a stuck watcher --------------------------------------------------------------
def test_host_list_survives_garbage_status_and_alive() -> None:
    from controller.hosts import list_hosts

    kv = MemoryKV()
    for h in ("h1", "h2", "h3"):
        kv.put_raw(keys.host(h), codec.encode_host(Host(h, "192.0.2.10")))
    kv.put_raw(keys.alive("h1"), codec.encode_alive(Alive(1.0, 5)))
    kv.put_raw(keys.alive("h2"), "garbage")
    kv.put_raw(keys.status("h1"), '{"host":"h1","revision":1e400,"last_pass":1,"ok":true}')
    kv.put_raw(keys.status("h2"), DEEP)
    infos = {i.host.name: i for i in list_hosts(kv)}
    assert infos["h1"].alive and not infos["h2"].alive and not infos["h3"].alive
    assert all(i.status is None for i in infos.values())


def test_a_watcher_that_cannot_follow_etcd_says_so() -> None:
    from controller.model.errors import StoreUnavailable
    from controller.store.watcher import Watcher

    def broken() -> MemoryKV:
        raise StoreUnavailable("etcd is down")

    w = Watcher(broken, keys.ROOT, Cache(), lambda: None, initial_backoff=0.01, max_backoff=0.05)
    w.start()
    try:
        deadline = time.monotonic() + 5
        while w.failures < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.stalled(60.0) is None  # not for long enough yet
        reason = w.stalled(0.0)
        assert reason is not None and "etcd is down" in reason
    finally:
        w.stop()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(  # (network, revision, address, MAC, namespace or none)
        st.tuples(
            st.sampled_from(("blue", "red", "gone")),
            st.integers(1, 6),
            st.integers(1, 4),
            st.integers(1, 4),
            st.sampled_from(("a", "b", None)),
        ),
        max_size=14,
    ),
    st.integers(1, 3),
)
def test_resolving_network_by_network_is_resolving_the_union(
    rows: list[tuple[str, int, int, int, str | None]], red_rev: int
) -> None:
    """``resolve_apart`` over per-network results equals ``resolve`` over the union whenever
    it answers, and declines only when two endpoints claim one interface."""
    nets = {
        "blue": (2, Network("blue", 5, "10.1.0.0/24")),
        "red": (red_rev, Network("red", 5 if red_rev != 2 else 6, "10.1.0.0/24")),
    }  # red shares blue's VNI unless created at revision 2: one of them loses it
    eps = {
        (net, f"e{i}"): (rev, replace(_ep(f"e{i}", f"10.1.0.{ip}", f"02:05:0a:01:00:0{mac}",
                                          ns=ns), network=net))
        for i, (net, rev, ip, mac, ns) in enumerate(rows)
    }  # fmt: skip
    apart = {
        n: resolve_network({k: v for k, v in eps.items() if k[0] == n}) for n in {k[0] for k in eps}
    }
    got = resolve_apart(nets, apart, decide_networks(nets))
    claims = [(e.host, e.netns, e.ifname) for k, (_, e) in eps.items() if e.netns is not None
              and k[0] not in decide_networks(nets).lost]  # fmt: skip
    if got is None:
        assert len(set(claims)) < len(claims)
    else:
        assert got == resolve(nets, eps)

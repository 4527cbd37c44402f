"""``plan_announcements`` (controller/plan/announce.py): which local endpoints are told about
which new bindings, by example and as properties over random pairs of views; and the frames
the sender builds from them (controller/dataplane/announce.py's ``frame``)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.dataplane.announce import frame
from controller.dataplane.vtep_arp import ETH_P_ARP
from controller.dataplane.vtep_nd import ETH_P_IPV6, parse_advert
from controller.model.naming import veth_host_name
from controller.model.records import Endpoint, Host, Network
from controller.model.view import HostView, NetworkView, RemoteEndpoint
from controller.plan.announce import MAX_FRAMES, Announcement, plan_announcements

H1 = Host("h1", "172.31.253.1")
NET = Network("blue", 7001, "10.1.0.0/24", subnet6="fd00:1::/64")


def _local(i: int, six: bool = True, mac: str | None = None) -> Endpoint:
    return Endpoint(f"e{i}", "blue", "h1", f"10.1.0.{i}", mac or f"02:00:00:00:00:{i:02x}",
                    netns=f"c{i}", ip6=f"fd00:1::{i:x}" if six else None)  # fmt: skip


def _remote(i: int, mac: str | None = None) -> RemoteEndpoint:
    return RemoteEndpoint(f"10.1.0.{i}", mac or f"02:00:00:00:01:{i:02x}", "172.31.253.2",
                          f"fd00:1::{i:x}")  # fmt: skip


def _view(local: list[Endpoint], remote: list[RemoteEndpoint]) -> HostView:
    nv = NetworkView(NET, 1450, tuple(local), tuple(remote), ("172.31.253.2",))
    return HostView(H1, (nv,) if local else ())


def test_a_new_remote_endpoint_is_announced_to_every_local_one_in_both_families() -> None:
    old = _view([_local(1), _local(2, six=False)], [])
    new = _view([_local(1), _local(2, six=False)], [_remote(9)])
    got = plan_announcements(old, new)
    port1, port2 = veth_host_name("blue", "e1"), veth_host_name("blue", "e2")
    mac = "02:00:00:00:01:09"
    assert set(got) == {
        Announcement(port1, "02:00:00:00:00:01", "10.1.0.9", mac),
        Announcement(port1, "02:00:00:00:00:01", "fd00:1::9", mac),
        Announcement(port2, "02:00:00:00:00:02", "10.1.0.9", mac),  # it has no IPv6 address
    }


def test_a_new_local_endpoint_is_announced_to_the_others_but_not_to_itself() -> None:
    old = _view([_local(1)], [])
    new = _view([_local(1), _local(2)], [])
    got = plan_announcements(old, new)
    assert {a.port for a in got} == {veth_host_name("blue", "e1")}
    assert {a.ip for a in got} == {"10.1.0.2", "fd00:1::2"}


def test_nothing_without_a_previous_view_or_for_a_new_network_or_a_removal() -> None:
    view = _view([_local(1)], [_remote(9)])
    assert plan_announcements(None, view) == ()  # a first pass: nobody waits for anything
    assert plan_announcements(_view([], []), view) == ()  # the network is new on this host
    assert plan_announcements(view, _view([_local(1)], [])) == ()  # gone: nothing to tell
    assert plan_announcements(view, view) == ()


def test_an_address_that_moved_to_another_mac_is_announced_again() -> None:
    old = _view([_local(1)], [_remote(9)])
    new = _view([_local(1)], [_remote(9, mac="02:00:00:00:0f:09")])
    assert {(a.ip, a.mac) for a in plan_announcements(old, new)} == {
        ("10.1.0.9", "02:00:00:00:0f:09"),
        ("fd00:1::9", "02:00:00:00:0f:09"),
    }


def test_a_local_endpoint_recreated_with_another_mac_is_not_told() -> None:
    """It is a new interface: it has no entry waiting (and is told nothing it did not ask)."""
    old = _view([_local(1)], [])
    new = _view([_local(1, mac="02:00:00:00:0e:01")], [_remote(9)])
    assert plan_announcements(old, new) == ()


def test_a_pass_that_would_send_too_many_frames_sends_none() -> None:
    local = [_local(i, six=False) for i in range(1, 41)]
    remote = [_remote(i) for i in range(100, 130)]  # 40 x 30 = 1,200 IPv4 frames
    assert MAX_FRAMES < 40 * 30
    assert plan_announcements(_view(local, []), _view(local, remote)) == ()
    few = remote[:20]  # 800
    assert len(plan_announcements(_view(local, []), _view(local, few))) == 800


def test_frames_are_a_gratuitous_arp_to_the_endpoint_and_an_overriding_advert() -> None:
    a = Announcement("p", "02:00:00:00:00:01", "10.1.0.9", "02:00:00:00:01:09")
    kind, data = frame(a)
    assert kind == ETH_P_ARP
    assert data[:6] == bytes.fromhex("020000000001") and data[6:12] == bytes.fromhex("020000000109")
    spa, tpa = data[14 + 14 : 14 + 18], data[14 + 24 : 14 + 28]
    assert spa == tpa == ipaddress.IPv4Address("10.1.0.9").packed  # gratuitous
    kind6, data6 = frame(replace(a, ip="fd00:1::9"))
    assert kind6 == ETH_P_IPV6
    assert parse_advert(data6) == ("fd00:1::9", "02:00:00:00:01:09")
    assert data6[14 + 40 + 4] & 0x20  # override


_IDS = st.integers(1, 12)


@st.composite
def _views(draw: st.DrawFn) -> HostView:
    local = [_local(i, six=draw(st.booleans())) for i in sorted(draw(st.sets(_IDS, max_size=4)))]
    macs = st.sampled_from([None, "02:00:00:00:0f:00"])
    remote = [_remote(i + 20, mac=draw(macs)) for i in sorted(draw(st.sets(_IDS, max_size=5)))]
    return _view(local, remote)


@settings(max_examples=300, deadline=None)
@given(old=_views(), new=_views())
def test_announcements_are_exactly_the_new_bindings_times_the_endpoints_already_there(
    old: HostView, new: HostView
) -> None:
    got = plan_announcements(old, new)
    assert len(got) == len(set(got))
    want: set[Announcement] = set()
    if old.networks and new.networks:
        before, now = old.networks[0], new.networks[0]
        bound = {ip: ep.mac for ep in before.local for ip in (ep.ip, ep.ip6) if ip}
        bound |= {ip: r.mac for r in before.remote for ip in r.addresses}
        fresh = {(ip, ep.mac) for ep in now.local for ip in (ep.ip, ep.ip6) if ip}
        fresh |= {(ip, r.mac) for r in now.remote for ip in r.addresses}
        fresh = {(ip, mac) for ip, mac in fresh if bound.get(ip) != mac}
        there = {(ep.id, ep.mac) for ep in before.local}  # the same interface, maybe readdressed
        for ep in now.local:
            if (ep.id, ep.mac) not in there:
                continue
            for ip, mac in fresh:
                family_ok = (ep.ip6 if ":" in ip else ep.ip) is not None
                if family_ok and ip not in (ep.ip, ep.ip6):
                    want.add(Announcement(veth_host_name("blue", ep.id), ep.mac, ip, mac))
    assert set(got) == want

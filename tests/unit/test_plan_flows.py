"""The OpenFlow table as a function of the host view: checked as match/action sets. No root."""

from __future__ import annotations

import pytest

from controller.model.flow import COOKIE, Flow, make_flow, parse_flow, parse_flows
from controller.model.records import Endpoint, Host, Network
from controller.model.view import HostView, Snapshot, host_view
from controller.plan.flows import (
    ICMP6_GUARDED,
    MULTICAST,
    P_ICMP6_GUARD,
    P_SOLICIT,
    P_TUNNEL_DROP,
    T_ARP,
    T_CLASSIFY,
    T_L2,
    T_ND,
    T_ND_REPLY,
    T_TUNNEL,
    render_flows,
    render_phy_flows,
)

H1, H2, H3, H4 = (Host(f"h{i}", f"192.0.2.{i}", backend="ovs") for i in range(1, 5))
BLUE = Network("blue", 100, "10.1.0.0/24")
RED = Network("red", 200, "10.1.0.0/24")  # overlapping subnet, other VNI
DUAL = Network("dual", 300, "10.3.0.0/24", subnet6="fd00:3::/64")
ONLY6 = Network("only6", 400, None, subnet6="fd00:3::/64")  # the same IPv6 subnet
TUN = 1


def ep(eid: str, host: str, n: int, net: str = "blue") -> Endpoint:
    vni_byte = 0x64 if net == "blue" else 0xC8
    return Endpoint(
        eid, net, host, f"10.1.0.{n}", f"02:{vni_byte:02x}:0a:01:00:{n:02x}", f"ns-{eid}"
    )


A, B = ep("a", "h1", 10), ep("b", "h1", 11)  # local, blue
C = ep("c", "h2", 20)  # remote, blue, on h2
D = ep("d", "h3", 30)  # remote, blue, on h3
R = ep("r", "h1", 10, "red")  # local, red, same address as A
S = ep("s", "h4", 40, "red")  # remote, red, on h4
E6 = Endpoint("e", "dual", "h1", "10.3.0.5", "02:01:0a:03:00:05", "ns-e", ip6="fd00:3::5")
F6 = Endpoint("f", "dual", "h2", "10.3.0.6", "02:01:0a:03:00:06", ip6="fd00:3::6")
G6 = Endpoint("g", "only6", "h1", None, "02:01:00:00:00:07", "ns-g", ip6="fd00:3::7")
H6 = Endpoint("h", "only6", "h3", None, "02:01:00:00:00:08", ip6="fd00:3::6")  # F6's address
OFPORTS = {("blue", "a"): 10, ("blue", "b"): 11, ("red", "r"): 12, ("dual", "e"): 13,
           ("only6", "g"): 14}  # fmt: skip


def view(*eps: Endpoint) -> HostView:
    snap = Snapshot(
        revision=1,
        networks={"blue": BLUE, "red": RED, "dual": DUAL, "only6": ONLY6},
        endpoints={(e.network, e.id): e for e in eps},
        hosts={h.name: h for h in (H1, H2, H3, H4)},
    )
    return host_view(snap, H1)


def table(*eps: Endpoint) -> dict[tuple[int, int, frozenset[tuple[str, str]]], list[str]]:
    """Rendered flows keyed by (table, priority, match as a set) -> actions."""
    flows = render_flows(view(*eps), OFPORTS, TUN)
    assert all(f.cookie == COOKIE for f in flows)
    out = {(f.table, f.priority, frozenset(f.match)): list(f.actions) for f in flows}
    assert len(out) == len(flows), "one flow per key"
    return out


def m(**fields: str | int) -> frozenset[tuple[str, str]]:
    return frozenset(make_flow(0, 0, fields, []).match)


def actions_of(flows: dict[tuple[int, int, frozenset[tuple[str, str]]], list[str]], t: int,
               p: int, **fields: str | int) -> list[str]:  # fmt: skip
    return flows[t, p, m(**fields)]


ALL = (A, B, C, D, R, S)
ALL6 = (*ALL, E6, F6, G6, H6)


def test_classify_pins_source_mac_and_ip_per_port() -> None:
    flows = table(*ALL)
    ip_a = actions_of(flows, T_CLASSIFY, 100, ip="", in_port=10, dl_src=A.mac, nw_src=A.ip)
    assert ip_a == ["set_field:100->reg6", f"goto_table:{T_L2}"]
    arp_a = actions_of(
        flows, T_CLASSIFY, 100, arp="", in_port=10, dl_src=A.mac, arp_sha=A.mac, arp_spa=A.ip
    )
    assert arp_a == ["set_field:100->reg6", f"goto_table:{T_ARP}"]
    ip_r = actions_of(flows, T_CLASSIFY, 100, ip="", in_port=12, dl_src=R.mac, nw_src=R.ip)
    assert ip_r == ["set_field:200->reg6", f"goto_table:{T_L2}"]
    # nothing else from a local port is admitted: exactly two classify flows per port
    for port in (10, 11, 12):
        per_port = [k for k in flows if k[0] == T_CLASSIFY and ("in_port", str(port)) in k[2]]
        assert len(per_port) == 2
    assert flows[T_CLASSIFY, 0, frozenset()] == ["drop"]


def test_tunnel_traffic_is_admitted_per_vni_only_from_member_vteps() -> None:
    flows = table(*ALL)
    tunnel = {k: v for k, v in flows.items() if k[0] == T_CLASSIFY and ("in_port", "1") in k[2]}
    admitted = {(dict(k[2])["tun_id"], dict(k[2])["tun_src"]) for k in tunnel if k[1] == 100}
    assert admitted == {("100", "192.0.2.2"), ("100", "192.0.2.3"), ("200", "192.0.2.4")}
    # every other tunnel packet: dropped by a flow of its own (its count is the vxlan drops)
    assert flows[T_CLASSIFY, P_TUNNEL_DROP, frozenset({("in_port", "1")})] == ["drop"]
    assert actions_of(flows, T_CLASSIFY, 100, in_port=TUN, tun_id=200, tun_src="192.0.2.4") == [
        "set_field:200->reg6",
        f"goto_table:{T_TUNNEL}",
    ]


def test_arp_responder_answers_for_every_endpoint_of_the_network_only() -> None:
    flows = table(*ALL)
    responders = {
        (dict(k[2])["reg6"], dict(k[2])["arp_tpa"]): v
        for k, v in flows.items()
        if k[0] == T_ARP and k[1] == 100
    }
    assert set(responders) == {
        ("100", A.ip), ("100", B.ip), ("100", C.ip), ("100", D.ip), ("200", R.ip), ("200", S.ip),
    }  # fmt: skip
    reply = responders["100", C.ip]
    assert f"set_field:{C.mac}->eth_src" in reply and f"set_field:{C.mac}->arp_sha" in reply
    assert "set_field:2->arp_op" in reply and reply[-1] == "IN_PORT"
    assert responders["200", R.ip] != responders["100", A.ip], "same IP, other network, other MAC"
    # unknown targets get no broadcast (no ARP crosses the underlay); other ARP goes on to L2
    assert actions_of(flows, T_ARP, 50, arp="", reg6=100, arp_op=1) == ["drop"]
    assert flows[T_ARP, 0, frozenset()] == [f"goto_table:{T_L2}"]


def test_unicast_goes_to_local_port_or_to_the_owners_vtep() -> None:
    flows = table(*ALL)
    assert actions_of(flows, T_L2, 100, reg6=100, dl_dst=B.mac) == ["output:11"]
    assert actions_of(flows, T_L2, 100, reg6=100, dl_dst=C.mac) == [
        "set_field:100->tun_id",
        "set_field:192.0.2.2->tun_dst",
        f"output:{TUN}",
    ]
    assert actions_of(flows, T_L2, 100, reg6=200, dl_dst=S.mac) == [
        "set_field:200->tun_id",
        "set_field:192.0.2.4->tun_dst",
        f"output:{TUN}",
    ]
    # from the tunnel: local ports of that network only, never back into the tunnel
    assert actions_of(flows, T_TUNNEL, 100, reg6=100, dl_dst=A.mac) == ["output:10"]
    assert (T_TUNNEL, 100, m(reg6=100, dl_dst=C.mac)) not in flows
    assert (T_TUNNEL, 100, m(reg6=200, dl_dst=A.mac)) not in flows, "isolation"
    assert flows[T_L2, 0, frozenset()] == flows[T_TUNNEL, 0, frozenset()] == ["drop"]


def test_broadcast_replicates_to_local_members_and_member_hosts_only() -> None:
    flows = table(*ALL)
    # one flood flow per network: the switch never sends a packet back out of its input port
    per_port = [k for k in flows if k[:2] == (T_L2, 50) and any(f == "in_port" for f, _ in k[2])]
    assert not per_port
    from_local = actions_of(flows, T_L2, 50, reg6=100, dl_dst=MULTICAST)
    assert from_local == [
        "output:10",
        "output:11",
        "set_field:100->tun_id",
        "set_field:192.0.2.2->tun_dst",
        f"output:{TUN}",
        "set_field:192.0.2.3->tun_dst",
        f"output:{TUN}",
    ]
    from_r = actions_of(flows, T_L2, 50, reg6=200, dl_dst=MULTICAST)
    assert from_r == [  # its only local port is the sender: not listed
        "set_field:200->tun_id",
        "set_field:192.0.2.4->tun_dst",
        f"output:{TUN}",
    ]
    assert actions_of(flows, T_TUNNEL, 50, reg6=100, dl_dst=MULTICAST) == ["output:10", "output:11"]
    assert actions_of(flows, T_TUNNEL, 50, reg6=200, dl_dst=MULTICAST) == ["output:12"]


def test_a_local_endpoint_coming_rewrites_one_flood_flow_not_one_per_port() -> None:
    """Adding the n-th local endpoint of a network changes O(1) flood flows (each O(n) long),
    not one per existing port."""
    eps = [ep(f"e{k}", "h1", 10 + k) for k in range(20)] + [C]
    ports = {("blue", e.id): 10 + k for k, e in enumerate(eps[:20])}
    before = set(render_flows(view(*eps[:19], C), ports, TUN))
    after = set(render_flows(view(*eps), ports, TUN))
    changed = [f for f in after - before if f.table == T_L2 and f.priority == 50]
    assert len(changed) == 1


def test_single_host_network_floods_nowhere_and_unnumbered_endpoints_get_no_flows() -> None:
    flows = render_flows(view(A, B), {("blue", "a"): 10}, TUN)
    assert all(("in_port", "11") not in f.match for f in flows)
    [flood] = [f for f in flows if f.table == T_L2 and f.priority == 50]
    assert flood.actions == ("drop",)
    from_tunnel = [f for f in flows if f.table == T_CLASSIFY and ("in_port", "1") in f.match]
    assert [f.priority for f in from_tunnel] == [P_TUNNEL_DROP]  # only the counted drop


def test_no_local_endpoints_leaves_only_the_default_flows() -> None:
    flows = render_flows(view(C, D), {}, TUN)
    assert sorted((f.table, f.priority) for f in flows) == [
        (0, 0),
        (0, P_TUNNEL_DROP),
        *[(0, P_ICMP6_GUARD)] * len(ICMP6_GUARDED),
        (10, 0),
        (12, 0),
        (13, 0),
        (13, 100),
        (20, 0),
        (30, 0),
    ]


def test_ipv6_sources_are_pinned_per_port_and_solicitations_go_to_the_responder() -> None:
    flows = table(*ALL6)
    own = {"in_port": 13, "dl_src": E6.mac, "ipv6_src": "fd00:3::5"}
    assert actions_of(flows, T_CLASSIFY, 100, ipv6="", **own) == [
        "set_field:300->reg6",
        f"goto_table:{T_L2}",
    ]
    assert actions_of(flows, T_CLASSIFY, P_SOLICIT, icmp6="", icmp_type=135, **own) == [
        "set_field:300->reg6",
        f"goto_table:{T_ND}",
    ]
    assert actions_of(flows, T_CLASSIFY, 100, ip="", in_port=13, dl_src=E6.mac, nw_src=E6.ip)
    only6 = [
        f for f in render_flows(view(*ALL6), OFPORTS, TUN)
        if f.table == T_CLASSIFY and ("in_port", "14") in f.match
    ]  # fmt: skip
    assert {f.match_dict.get("ipv6", f.match_dict.get("icmp6")) for f in only6} == {""}
    assert len(only6) == 2, "an IPv6-only endpoint gets no IPv4 or ARP flow"
    for icmp_type in ICMP6_GUARDED:  # router messages and advertisements, from anywhere
        assert actions_of(flows, T_CLASSIFY, P_ICMP6_GUARD, icmp6="", icmp_type=icmp_type) == [
            "drop"
        ]
    assert P_SOLICIT > P_ICMP6_GUARD > 100


def test_nd_responder_answers_for_every_ipv6_endpoint_of_its_network_only() -> None:
    flows = table(*ALL6)
    nd = {k: a for k, a in flows.items() if k[0] == T_ND and k[1] == 100}
    targets = {(dict(k[2])["reg6"], dict(k[2])["nd_target"]) for k in nd}
    assert targets == {("300", "fd00:3::5"), ("300", "fd00:3::6"), ("400", "fd00:3::7"),
                       ("400", "fd00:3::6")}  # fmt: skip
    to_f6 = actions_of(flows, T_ND, 100, icmp6="", reg6=300, icmp_type=135, nd_target="fd00:3::6")
    to_h6 = actions_of(flows, T_ND, 100, icmp6="", reg6=400, icmp_type=135, nd_target="fd00:3::6")
    assert f"set_field:{F6.mac}->eth_src" in to_f6 and f"set_field:{H6.mac}->eth_src" in to_h6
    assert to_f6 == [
        "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]",
        f"set_field:{F6.mac}->eth_src",
        "move:NXM_NX_IPV6_SRC[]->NXM_NX_IPV6_DST[]",
        "set_field:fd00:3::6->ipv6_src",
        "set_field:136->icmpv6_type",
        "set_field:1610612736->nd_reserved",
        "set_field:2->nd_options_type",
        f"goto_table:{T_ND_REPLY}",
    ]
    assert actions_of(flows, T_ND, 0) == ["drop"]  # a solicitation for nobody's address
    assert actions_of(flows, T_ND_REPLY, 100, icmp6="", icmp_type=136) == [
        "move:NXM_OF_ETH_SRC[]->NXM_NX_ND_TLL[]",
        "IN_PORT",
    ]


def test_duplicate_mac_is_realised_once_deterministically() -> None:
    twin = Endpoint("z", "blue", "h3", "10.1.0.99", C.mac, "ns-z")
    one = render_flows(view(A, C, twin), OFPORTS, TUN)
    two = render_flows(view(twin, C, A), OFPORTS, TUN)
    assert one == two
    to_mac = [f for f in one if f.table == T_L2 and ("dl_dst", C.mac) in f.match]
    assert len(to_mac) == 1


def test_render_is_pure_and_deterministic() -> None:
    v = view(*ALL)
    assert render_flows(v, OFPORTS, TUN) == render_flows(v, dict(reversed(OFPORTS.items())), TUN)


def test_phy_flows_connect_nic_and_local_only() -> None:
    flows = {(f.priority, frozenset(f.match)): list(f.actions) for f in render_phy_flows(1)}
    assert flows == {
        (10, frozenset({("in_port", "1")})): ["LOCAL"],
        (10, frozenset({("in_port", "LOCAL")})): ["output:1"],
        (0, frozenset()): ["drop"],
    }


# -- canonical form: what ovs-ofctl prints back parses into equal flows --------------------------


@pytest.mark.parametrize(
    ("line", "rendered"),
    [
        (
            " cookie=0x68646c65, table=10, priority=100,arp,reg6=0x64,arp_tpa=10.1.0.20,arp_op=1 "
            "actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:02:64:0A:01:00:14,"
            "load:0x2->NXM_OF_ARP_OP[],IN_PORT",
            make_flow(
                10,
                100,
                {"arp": "", "reg6": 100, "arp_op": 1, "arp_tpa": "10.1.0.20"},
                [
                    "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]",
                    "set_field:02:64:0a:01:00:14->eth_src",
                    "set_field:2->arp_op",
                    "IN_PORT",
                ],
            ),
        ),
        (
            " cookie=0x68646c65, priority=10,in_port=1 actions=LOCAL",
            make_flow(0, 10, {"in_port": 1}, ["output:LOCAL"]),
        ),
        (
            " cookie=0x68646c65, duration=3.2s, table=20, n_packets=4, n_bytes=392, "
            "priority=100,reg6=0x64,dl_dst=02:64:0a:01:00:14 actions=set_field:0x64->tun_id,"
            "set_field:192.0.2.2->tun_dst,output:1",
            make_flow(
                20,
                100,
                {"reg6": 100, "dl_dst": "02:64:0a:01:00:14"},
                ["set_field:100->tun_id", "set_field:192.0.2.2->tun_dst", "output:1"],
            ),
        ),
    ],
)
def test_dumped_lines_parse_into_rendered_flows(line: str, rendered: Flow) -> None:
    assert parse_flow(line) == rendered


def test_every_rendered_flow_round_trips_through_its_text() -> None:
    flows = render_flows(view(*ALL6), OFPORTS, TUN) + render_phy_flows(1)
    text = "\n".join(" " + f.text().replace(",actions=", " actions=") for f in flows)
    assert parse_flows(text) == frozenset(flows)
    assert parse_flow("OFPST_FLOW reply (OF1.4) (xid=0x2):") is None


def test_strict_text_names_the_flow_and_scopes_it_to_our_cookie() -> None:
    f = make_flow(20, 100, {"reg6": 100, "dl_dst": B.mac}, ["output:11"])
    assert f.strict_text() == f"cookie={COOKIE:#x}/-1,table=20,priority=100,reg6=100,dl_dst={B.mac}"
    assert f.text().endswith(",actions=output:11")


def test_rendered_flows_are_already_canonical() -> None:
    """The renderer skips canonicalisation for speed: every flow must be a fixed point."""
    for f in render_flows(view(*ALL6), OFPORTS, TUN) + render_phy_flows(1):
        assert make_flow(f.table, f.priority, f.match_dict, f.actions, f.cookie) == f


def test_ipv6_vteps_use_the_ipv6_tunnel_fields() -> None:
    hosts = [Host(f"h{i}", f"fd00:ff::{i}", backend="ovs") for i in (1, 2)]
    a = Endpoint("a", "blue", "h1", "10.1.0.10", A.mac, "ns-a")
    c = Endpoint("c", "blue", "h2", "10.1.0.20", C.mac)
    snap = Snapshot(revision=1, networks={"blue": BLUE}, endpoints={("blue", "a"): a,
                    ("blue", "c"): c}, hosts={h.name: h for h in hosts})  # fmt: skip
    flows = render_flows(host_view(snap, hosts[0]), {("blue", "a"): 10}, TUN)
    text = "\n".join(f.text() for f in flows)
    assert "tun_src" not in text and "->tun_dst" not in text
    admit = [f for f in flows if ("tun_ipv6_src", "fd00:ff::2") in f.match]
    assert [(f.table, f.match_dict["tun_id"]) for f in admit] == [(T_CLASSIFY, "100")]
    [unicast] = [f for f in flows if f.table == T_L2 and ("dl_dst", C.mac) in f.match]
    assert unicast.actions == ("set_field:100->tun_id", "set_field:fd00:ff::2->tun_ipv6_dst",
                               f"output:{TUN}")  # fmt: skip
    for f in flows:
        assert make_flow(f.table, f.priority, f.match_dict, f.actions, f.cookie) == f

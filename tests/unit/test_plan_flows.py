"""The OpenFlow table as a function of the host view: checked as match/action sets. No root."""

from __future__ import annotations

import pytest

from controller.model.flow import COOKIE, Flow, make_flow, parse_flow, parse_flows
from controller.model.records import Endpoint, Host, Network
from controller.model.view import HostView, Snapshot, host_view
from controller.plan.flows import (
    MULTICAST,
    P_TUNNEL_DROP,
    T_ARP,
    T_CLASSIFY,
    T_L2,
    T_TUNNEL,
    render_flows,
    render_phy_flows,
)

H1, H2, H3, H4 = (Host(f"h{i}", f"192.0.2.{i}", backend="ovs") for i in range(1, 5))
BLUE = Network("blue", 100, "10.1.0.0/24")
RED = Network("red", 200, "10.1.0.0/24")  # overlapping subnet, other VNI
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
OFPORTS = {("blue", "a"): 10, ("blue", "b"): 11, ("red", "r"): 12}


def view(*eps: Endpoint) -> HostView:
    snap = Snapshot(
        revision=1,
        networks={"blue": BLUE, "red": RED},
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
    from_a = actions_of(flows, T_L2, 50, reg6=100, in_port=10, dl_dst=MULTICAST)
    assert from_a == [
        "output:11",
        "set_field:100->tun_id",
        "set_field:192.0.2.2->tun_dst",
        f"output:{TUN}",
        "set_field:192.0.2.3->tun_dst",
        f"output:{TUN}",
    ]
    from_r = actions_of(flows, T_L2, 50, reg6=200, in_port=12, dl_dst=MULTICAST)
    assert from_r == ["set_field:200->tun_id", "set_field:192.0.2.4->tun_dst", f"output:{TUN}"]
    assert actions_of(flows, T_TUNNEL, 50, reg6=100, dl_dst=MULTICAST) == ["output:10", "output:11"]
    assert actions_of(flows, T_TUNNEL, 50, reg6=200, dl_dst=MULTICAST) == ["output:12"]


def test_single_host_network_floods_nowhere_and_unnumbered_endpoints_get_no_flows() -> None:
    flows = render_flows(view(A, B), {("blue", "a"): 10}, TUN)
    assert all(("in_port", "11") not in f.match for f in flows)
    [flood] = [f for f in flows if f.table == T_L2 and f.priority == 50]
    assert flood.actions == ("drop",)
    from_tunnel = [f for f in flows if f.table == T_CLASSIFY and ("in_port", "1") in f.match]
    assert [f.priority for f in from_tunnel] == [P_TUNNEL_DROP]  # only the counted drop


def test_no_local_endpoints_leaves_only_the_default_flows() -> None:
    flows = render_flows(view(C, D), {}, TUN)
    assert {(f.table, f.priority) for f in flows} == {
        (0, 0),
        (0, P_TUNNEL_DROP),
        (10, 0),
        (20, 0),
        (30, 0),
    }


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
    flows = render_flows(view(*ALL), OFPORTS, TUN) + render_phy_flows(1)
    text = "\n".join(" " + f.text().replace(",actions=", " actions=") for f in flows)
    assert parse_flows(text) == frozenset(flows)
    assert parse_flow("OFPST_FLOW reply (OF1.4) (xid=0x2):") is None


def test_strict_text_names_the_flow_and_scopes_it_to_our_cookie() -> None:
    f = make_flow(20, 100, {"reg6": 100, "dl_dst": B.mac}, ["output:11"])
    assert f.strict_text() == f"cookie={COOKIE:#x}/-1,table=20,priority=100,reg6=100,dl_dst={B.mac}"
    assert f.text().endswith(",actions=output:11")


def test_rendered_flows_are_already_canonical() -> None:
    """The renderer skips canonicalisation for speed: every flow must be a fixed point."""
    for f in render_flows(view(*ALL), OFPORTS, TUN) + render_phy_flows(1):
        assert make_flow(f.table, f.priority, f.match_dict, f.actions, f.cookie) == f

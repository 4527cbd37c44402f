"""What resolving member VTEPs ahead of traffic reads and sends (``netdev`` datapath): the
``tnl/neigh/show`` parser and the ARP frames. The planner's side is in test_plan_ovsdb.py.
No root."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.dataplane.ovs_unixctl import parse_tunnel_neighbours
from controller.dataplane.vtep_arp import arp_frame, parse_reply


def test_tunnel_neighbour_table_parses_per_bridge() -> None:
    text = (
        "IP                                            MAC                 Bridge\n"
        "==========================================================================\n"
        "192.0.2.2                                     02:68:C0:00:02:02   br-phy\n"
        "192.0.2.3                                     02:68:c0:00:02:03   br-other\n"
        "fe80::1                                       02:00:00:00:00:01   br-phy   STATIC\n"
    )
    assert parse_tunnel_neighbours(text, "br-phy") == {
        "192.0.2.2": "02:68:c0:00:02:02", "fe80::1": "02:00:00:00:00:01",
    }  # fmt: skip
    assert parse_tunnel_neighbours("", "br-phy") == {}


_macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
_ips = st.ip_addresses(v=4).map(str)


@given(_macs, _ips, _ips)
def test_an_arp_reply_frame_parses_back(mac: str, spa: str, tpa: str) -> None:
    frame = arp_frame(2, mac, spa, b"\x00" * 6, tpa)
    assert parse_reply(frame) == (spa, mac, tpa)
    assert parse_reply(arp_frame(1, mac, spa, b"\x00" * 6, tpa)) is None  # a request
    assert parse_reply(frame[:30]) is None
    assert parse_reply(frame[:12] + b"\x08\x00" + frame[14:]) is None  # not ARP

"""What resolving member VTEPs ahead of traffic reads and sends (``netdev`` datapath): the
``tnl/neigh/show`` parser, the ARP frames and the neighbour discovery frames (IPv6 underlay).
The planner's side is in test_plan_ovsdb.py. No root."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from controller.dataplane.ovs_unixctl import parse_tunnel_neighbours
from controller.dataplane.vtep_arp import arp_frame, parse_reply
from controller.dataplane.vtep_nd import advert_frame, parse_advert, solicit_frame, solicited_node


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


_ip6s = st.integers(0, 2**120 - 1).map(lambda n: str(ipaddress.IPv6Address((0xFD << 120) | n)))


def _icmp6_sums_to_ones(frame: bytes) -> bool:
    """The ICMPv6 checksum of ``frame`` verifies (RFC 4443 2.3: the sum over the
    pseudo-header and the message is all ones)."""
    src, dst, icmp = frame[22:38], frame[38:54], frame[54:]
    data = src + dst + struct.pack("!I3xB", len(icmp), 58) + icmp
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


@given(_macs, _ip6s, _ip6s)
def test_a_solicitation_goes_to_the_targets_group_with_a_valid_checksum(
    mac: str, ip: str, target: str
) -> None:
    frame = solicit_frame(mac, ip, target)
    group, group_mac = solicited_node(target)
    low = ipaddress.IPv6Address(target).packed[-3:]
    assert group == ipaddress.IPv6Address("ff02::1:ff00:0").packed[:13] + low
    assert frame[:6] == group_mac == b"\x33\x33\xff" + low
    assert frame[12:14] == b"\x86\xdd" and frame[20] == 58 and frame[21] == 255  # hop limit
    assert frame[38:54] == group and frame[54] == 135
    assert _icmp6_sums_to_ones(frame)
    assert parse_advert(frame) is None  # a solicitation is no advertisement


@given(_macs, _ip6s)
def test_an_advertisement_parses_back_and_others_do_not(mac: str, ip: str) -> None:
    frame = advert_frame(mac, ip)
    assert _icmp6_sums_to_ones(frame) and frame[54] == 136
    assert parse_advert(frame) == (ip, mac)
    assert parse_advert(frame[:21] + b"\x40" + frame[22:]) is None  # hop limit 64: off-link
    other = bytes.fromhex("020000000099")  # without its option: the Ethernet source
    assert parse_advert(frame[:6] + other + frame[12:-8]) == (ip, "02:00:00:00:00:99")
    assert parse_advert(frame[:12] + b"\x08\x00" + frame[14:]) is None  # not IPv6

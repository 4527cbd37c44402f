"""Decoding kernel announcements (``KernelEvents.decode``) from hand-packed rtnetlink
messages: a link's own announcement is a sighting, the bridge's announcements about its ports
(``AF_BRIDGE``) are not -- they carry neither the link's kind nor its owner marker, and taking
them for the link made every port state change look like drift. No root, no socket."""

from __future__ import annotations

import socket
import struct

from controller.dataplane.kernel_events import RTM_DELLINK, RTM_NEWLINK, KernelEvents
from controller.model.kernel_events import LinkSeen
from controller.model.naming import OWNER_ALIAS


def _rta(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _link_message(mtype: int, family: int, index: int, name: str, alias: str | None) -> bytes:
    body = struct.pack("=BxHiII", family, 1, index, 0x1, 0)  # IFF_UP
    body += _rta(3, name.encode() + b"\0")  # IFLA_IFNAME
    body += _rta(4, struct.pack("=I", 1450))  # IFLA_MTU
    if alias is not None:
        body += _rta(20, alias.encode() + b"\0")  # IFLA_IFALIAS
    body += _rta(18, _rta(1, b"vxlan\0"))  # IFLA_LINKINFO / IFLA_INFO_KIND
    return struct.pack("=LHHLL", 16 + len(body), mtype, 0, 0, 0) + body


def test_a_links_own_announcement_is_a_sighting_and_the_bridges_are_not() -> None:
    events = KernelEvents(None, lambda seen: None)
    own = events.decode(_link_message(RTM_NEWLINK, socket.AF_UNSPEC, 7, "hdx1", OWNER_ALIAS))
    assert len(own) == 1 and isinstance(own[0], LinkSeen) and own[0].link is not None
    assert own[0].link.kind == "vxlan" and own[0].link.owned and own[0].link.mtu == 1450
    for mtype in (RTM_NEWLINK, RTM_DELLINK):  # port state; a port leaving its bridge
        assert events.decode(_link_message(mtype, socket.AF_BRIDGE, 7, "hdx1", None)) == []
    gone = events.decode(_link_message(RTM_DELLINK, socket.AF_UNSPEC, 7, "hdx1", OWNER_ALIAS))
    assert gone == [LinkSeen("hdx1", None)]
    assert events.decode(_link_message(RTM_NEWLINK, socket.AF_UNSPEC, 8, "eth0", None)) == []

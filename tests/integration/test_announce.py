"""``Announcer`` (controller/dataplane/announce.py) against the real kernel, in throw-away
namespaces (root only): an endpoint whose neighbour entry waits for an address gets it from
the announcement, in both families; and the fake (``RecordingAnnouncer``) counts what the real
one counts for the same ports -- the contract the reconciler's unit tests rely on."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import netns

from controller.dataplane.announce import Announcer
from controller.dataplane.fake_announce import RecordingAnnouncer
from controller.lab.nsutil import run_in_netns, write_sysctls
from controller.lab.pinger import ping
from controller.plan.announce import Announcement

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
]

EP_MAC, NEW_MAC = "02:42:0a:4e:00:0a", "02:42:0a:4e:00:14"
NEW4, NEW6 = "10.78.0.20", "fd00:78::20"


@dataclass(frozen=True)
class Pair:
    host: str  # plays the host's namespace: the port ``port`` is here
    ep: str  # the endpoint's namespace: ``eth0``
    port: str


@pytest.fixture
def pair() -> Iterator[Pair]:
    prefix = f"hat-{uuid.uuid4().hex[:6]}"
    host, ep = f"{prefix}-h", f"{prefix}-e"
    created: list[str] = []
    try:
        for name in (host, ep):
            netns.create(name)
            created.append(name)
        p = Pair(host, ep, "hatp0")
        run_in_netns(host, ["ip", "link", "add", p.port, "type", "veth", "peer", "name", "eth0",
                            "netns", ep])  # fmt: skip
        run_in_netns(host, ["ip", "link", "set", p.port, "up"])
        run_in_netns(host, ["ip", "link", "add", "hatd0", "type", "dummy"])  # down
        for cmd in (
            ["ip", "link", "set", "eth0", "address", EP_MAC],
            ["ip", "addr", "add", "10.78.0.10/24", "dev", "eth0"],
            ["ip", "addr", "add", "fd00:78::10/64", "dev", "eth0", "nodad"],
            ["ip", "link", "set", "eth0", "up"],
        ):
            run_in_netns(ep, cmd)
        # IPv6 takes multicast (all nodes) once the kernel has seen the carrier, which it
        # reports up to a second late (link watch): wait for the route addrconf then adds
        deadline = time.monotonic() + 5.0
        while "ff00::/8" not in run_in_netns(ep, ["ip", "-6", "route", "show", "table", "local",
                                                  "dev", "eth0"]).stdout:  # fmt: skip
            assert time.monotonic() < deadline, "eth0 never got IPv6 multicast"
            time.sleep(0.05)
        # one solicitation, then none for 5 s: only an announcement can complete the entry
        write_sysctls(ep, {"net/ipv4/neigh/eth0/retrans_time_ms": 5000,
                           "net/ipv6/neigh/eth0/retrans_time_ms": 5000})  # fmt: skip
        yield p
    finally:
        for name in created:
            netns.remove(name)


def _entry(ns: str, ip: str) -> str:
    return run_in_netns(ns, ["ip", "neigh", "show", ip, "dev", "eth0"]).stdout.strip()


def test_a_waiting_entry_is_completed_by_the_announcement_in_both_families(pair: Pair) -> None:
    for dst in (NEW4, NEW6):
        ping(pair.ep, dst, count=1, wait=0.05)  # starts resolving; nothing answers
        assert "INCOMPLETE" in _entry(pair.ep, dst) or "FAILED" in _entry(pair.ep, dst)
    real = Announcer(pair.host)
    try:
        sent = real.send([Announcement(pair.port, EP_MAC, ip, NEW_MAC) for ip in (NEW4, NEW6)])
    finally:
        real.close()
    assert (sent.sent, sent.gone, sent.failed) == (2, 0, 0)
    deadline = time.monotonic() + 1.0
    while not all(f"lladdr {NEW_MAC}" in _entry(pair.ep, ip) for ip in (NEW4, NEW6)):
        assert time.monotonic() < deadline, [_entry(pair.ep, ip) for ip in (NEW4, NEW6)]
        time.sleep(0.01)


def test_an_endpoint_that_never_asked_gets_no_entry(pair: Pair) -> None:
    """Linux creates no entry from an unsolicited announcement (its defaults): nothing is
    added to a namespace that had no use for the address."""
    real = Announcer(pair.host)
    try:
        real.send([Announcement(pair.port, EP_MAC, ip, NEW_MAC) for ip in (NEW4, NEW6)])
    finally:
        real.close()
    time.sleep(0.05)
    assert _entry(pair.ep, NEW4) == "" and _entry(pair.ep, NEW6) == ""


def test_the_fake_counts_what_the_real_announcer_counts(pair: Pair) -> None:
    """Up, missing and down ports: the same ``Sent`` from both."""
    batch = [
        Announcement(port, EP_MAC, NEW4, NEW_MAC)
        for port in (pair.port, "hat-missing", "hatd0", pair.port)
    ]
    real = Announcer(pair.host)
    try:
        got = real.send(batch)
    finally:
        real.close()
    fake = RecordingAnnouncer(lambda: {pair.port})
    assert got == fake.send(batch)
    assert (got.sent, got.gone, got.failed) == (2, 2, 0)
    assert fake.sent == [batch[0], batch[3]]

"""Observations of a running lab shared by the demo, the e2e tests and the benchmarks.

They read the kernel (pyroute2, ``flags=0`` so a typo never creates a namespace) and etcd
(through ``EtcdHTTP``, never through the code under test) and only ever write into namespaces
the caller created (e.g. a forged neighbour entry in a container).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute

from controller.lab.etcd_http import EtcdHTTP, EtcdHTTPError
from controller.lab.pinger import PingResult, ping
from controller.model.naming import OWNER_ALIAS, PREFIX


@dataclass(frozen=True, slots=True)
class LinkInfo:
    name: str
    index: int
    kind: str | None
    alias: str | None
    mtu: int


def links(netns: str) -> list[LinkInfo]:
    """All links of ``netns``."""
    out: list[LinkInfo] = []
    with IPRoute(netns=netns, flags=0) as ipr:
        for msg in ipr.get_links():
            info = msg.get("IFLA_LINKINFO")
            kind = info.get("IFLA_INFO_KIND") if info is not None else None
            out.append(
                LinkInfo(
                    str(msg.get("IFLA_IFNAME")),
                    int(msg["index"]),
                    kind,
                    msg.get("IFLA_IFALIAS"),
                    int(msg.get("IFLA_MTU")),
                )
            )
    return out


def owned_links(netns: str) -> list[LinkInfo]:
    """Links heddle owns in ``netns``: named ``hd*`` or carrying the owner ifalias."""
    return [ln for ln in links(netns) if ln.name.startswith(PREFIX) or ln.alias == OWNER_ALIAS]


def rx_packets(netns: str, ifname: str = "eth0") -> int:
    """Received-packet counter of ``ifname`` in ``netns`` (0 if the link does not exist)."""
    with IPRoute(netns=netns, flags=0) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return 0
        msg = ipr.link("get", index=found[0])[0]
        stats = msg.get("IFLA_STATS64") or msg.get("IFLA_STATS")
        return int(stats["rx_packets"]) if stats is not None else 0


def forge_neighbour(netns: str, ip: str, mac: str, ifname: str = "eth0") -> None:
    """Install a permanent ARP entry ``ip -> mac`` in a container namespace we created."""
    with IPRoute(netns=netns, flags=0) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.neigh("replace", ifindex=idx, dst=ip, lladdr=mac, state="permanent")


def wait_ping(
    netns: str, dst: str, timeout: float = 30.0, count: int = 3, interval: float = 0.02
) -> PingResult | None:
    """Retry a short ping until it fully succeeds; the successful result, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = ping(netns, dst, count=count, interval=interval, wait=0.5)
        if res.ok:
            return res
        time.sleep(0.1)
    return None


def wait_status(
    probe: EtcdHTTP, hosts: Iterable[str], min_revision: int, timeout: float = 30.0
) -> dict[str, dict[str, object]]:
    """Wait until every host's agent reports a pass at ``revision >= min_revision``.

    Returns the status records; raises ``TimeoutError`` naming the laggards.
    """
    pending = set(hosts)
    got: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for h in sorted(pending):
            with contextlib.suppress(EtcdHTTPError):
                st = probe.status_of(h)
                rev = st[0].get("revision") if st is not None else None
                if st is not None and isinstance(rev, int) and rev >= min_revision:
                    got[h] = st[0]
                    pending.discard(h)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"no pass at revision >= {min_revision} on {sorted(pending)}")
        if pending:
            time.sleep(0.05)
    return got

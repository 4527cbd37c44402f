"""The lab's links and namespaces in the kernel: its bridges in the root namespace, a namespace
wired to them by veth pairs (a lab host, or an outsider on the underlay), endpoint namespaces,
and taking links away again.

No record keeping here: ``controller/lab/topology.py`` records each object in the lab's record
(``controller/lab/state.py``) *before* calling in, so a failure half-way leaves nothing
``down`` does not know of. Every function raises what pyroute2 raises (``NetlinkError``,
``OSError``) on a failure; retrying cannot help (a name is taken, or no root).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2 import netns as pnetns
from pyroute2.netlink.exceptions import NetlinkError

from controller.lab.nsutil import write_sysctls

UNDERLAY_DEV = "ul0"

#: A lab host's own: br_netfilter off (its bridges are heddle's) and no IPv6 chatter on its
#: management or underlay link (the ``conf/`` keys apply once those links exist).
HOST_SYSCTLS = {
    "net/bridge/bridge-nf-call-iptables": 0,
    "net/bridge/bridge-nf-call-ip6tables": 0,
    "net/bridge/bridge-nf-call-arptables": 0,
    "net/ipv6/conf/mgmt0/disable_ipv6": 1,
    "net/ipv6/conf/ul0/disable_ipv6": 1,
}
CONTAINER_SYSCTLS = {
    "net/ipv6/conf/all/disable_ipv6": 1,
    "net/ipv6/conf/default/disable_ipv6": 1,
}
IFA_F_NODAD = 0x02


@dataclass(frozen=True, slots=True)
class Wire:
    """One veth pair from a namespace to a root bridge: ``root_end`` in ``bridge``, ``inner``
    inside with ``address``/``prefixlen``."""

    root_end: str
    inner: str
    bridge: str
    address: str
    prefixlen: int


def link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def root_link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return link_index(ipr, name) is not None


def add_address(ipr: IPRoute, index: int | None, address: str, prefixlen: int) -> None:
    """Add ``address/prefixlen`` on link ``index``; an IPv6 one without duplicate address
    detection (it would hold the VTEP tentative for a second or more)."""
    assert index is not None, f"no link for {address}"
    flags = {"flags": IFA_F_NODAD} if ":" in address else {}
    ipr.addr("add", index=index, address=address, prefixlen=prefixlen, **flags)


def make_bridge(name: str, address: str | None, prefixlen: int) -> None:
    """Root bridge ``name``, up, IPv6 and multicast snooping off, with ``address`` if any."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="bridge", br_mcast_snooping=0)
        write_sysctls(None, {f"net/ipv6/conf/{name}/disable_ipv6": 1})
        idx = link_index(ipr, name)
        assert idx is not None
        if address is not None:
            ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
        ipr.link("set", index=idx, state="up")


def ipv6_underlay(ns: str) -> None:
    """IPv6 on ``ul0`` of ``ns`` -- its VTEP address only: no link-local address of the
    kernel's making, so no router solicitation or MLD report reaches the underlay (neighbour
    discovery between VTEPs is the underlay's own)."""
    write_sysctls(ns, {f"net/ipv6/conf/{UNDERLAY_DEV}/addr_gen_mode": 1,
                       f"net/ipv6/conf/{UNDERLAY_DEV}/disable_ipv6": 0})  # fmt: skip


def wire_netns(
    ns: str, wires: Sequence[Wire], sysctls: Mapping[str, int], six_underlay: bool
) -> None:
    """Connect the existing namespace ``ns`` by ``wires``: each root end in its bridge and up
    (IPv6 off), then inside ``sysctls`` (those naming the new links), IPv6 on ``ul0`` when
    ``six_underlay``, ``lo`` up and every inner end addressed and up."""
    for w in wires:
        with IPRoute() as ipr:
            ipr.link("add", ifname=w.root_end, kind="veth",
                     peer={"ifname": w.inner, "net_ns_fd": ns})  # fmt: skip
            write_sysctls(None, {f"net/ipv6/conf/{w.root_end}/disable_ipv6": 1})
            idx, br = link_index(ipr, w.root_end), link_index(ipr, w.bridge)
            ipr.link("set", index=idx, master=br, state="up")
    write_sysctls(ns, dict(sysctls))
    if six_underlay:
        ipv6_underlay(ns)
    with IPRoute(netns=ns, flags=0) as h:
        h.link("set", index=link_index(h, "lo"), state="up")
        for w in wires:
            idx = link_index(h, w.inner)
            add_address(h, idx, w.address, w.prefixlen)
            h.link("set", index=idx, state="up")


def make_endpoint_netns(name: str) -> None:
    """Namespace ``name`` as a container's: ``lo`` up, IPv6 off."""
    pnetns.create(name)
    write_sysctls(name, CONTAINER_SYSCTLS)
    with IPRoute(netns=name, flags=0) as ipr:
        ipr.link("set", index=link_index(ipr, "lo"), state="up")


def delete_links(names: Sequence[str]) -> None:
    """Delete each root link of ``names`` that exists (one end of a veth takes both). Best
    effort: one that cannot be deleted is left for ``links_left`` to report."""
    with IPRoute() as ipr:
        for name in names:
            with contextlib.suppress(NetlinkError):
                idx = link_index(ipr, name)
                if idx is not None:
                    ipr.link("del", index=idx)


def links_left(names: Sequence[str], timeout: float = 5.0) -> list[str]:
    """Wait up to ``timeout`` s for the root links ``names`` to be gone (the kernel deletes a
    device after an RCU grace period); return those still there."""
    deadline = time.monotonic() + timeout
    with IPRoute() as ipr:
        left = [n for n in names if link_index(ipr, n) is not None]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [n for n in left if link_index(ipr, n) is not None]
    return left

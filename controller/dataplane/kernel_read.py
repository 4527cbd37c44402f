"""What the kernel backend reads: the host's ``hd*`` links, its FDB and neighbour entries, and
the endpoint sides inside endpoint namespaces (``controller/dataplane/kernel.py`` puts them
together into one ``KernelState``). Read-only; raise ``NetlinkError`` / ``OSError`` when the
host namespace cannot be read.

``fast`` (the driver's ``fast_netlink``) reads the host through ``RawRtnl`` (raw socket, struct
parsing); otherwise through pyroute2, with the same answers (the integration tests compare
them).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence

from controller.dataplane.kernel_events import link_state
from controller.dataplane.kernel_host import HostSockets
from controller.dataplane.netns_handles import netns_inode
from controller.dataplane.pyroute2_msgs import (
    IFF_UP,
    MAIN_TABLE,
    info_data,
    kind,
    owned,
    port_learning,
    vxlan_attrs,
)
from controller.dataplane.rtnetlink import ip_text
from controller.model.kernel_state import EndpointSide, LinkState
from controller.model.naming import PREFIX


def read_links(sockets: HostSockets, fast: bool) -> dict[str, LinkState]:
    """Every ``hd*`` link of the host namespace: one raw dump (``fast``; 82 links in 2.2 ms
    here, where pyroute2 took 29 ms and was the largest stage of a convergence pass) or
    pyroute2's."""
    if fast:
        raws = list(sockets.rtnl().links())
        names = {r.index: r.name for r in raws}
        return {r.name: link_state(r, names) for r in raws if r.name.startswith(PREFIX)}
    dump = sockets.host().link("dump")
    pnames = {m["index"]: m.get("IFLA_IFNAME") for m in dump}
    links: dict[str, LinkState] = {}
    for m in dump:
        name = m.get("IFLA_IFNAME")
        if not isinstance(name, str) or not name.startswith(PREFIX):
            continue
        link_kind = kind(m)
        snooping = None
        if link_kind == "bridge":
            data = info_data(m)
            snooping = bool(data.get("IFLA_BR_MCAST_SNOOPING")) if data is not None else None
        links[name] = LinkState(
            name=name,
            kind=link_kind,
            owned=owned(m),
            index=m["index"],
            mtu=int(m.get("IFLA_MTU")),
            mac=str(m.get("IFLA_ADDRESS") or ""),
            up=bool(m["flags"] & IFF_UP),
            master=pnames.get(m.get("IFLA_MASTER")) if m.get("IFLA_MASTER") else None,
            mcast_snooping=snooping,
            vxlan=vxlan_attrs(m),
            learning=port_learning(m),
        )
    return links


def read_entries(
    sockets: HostSockets, fast: bool, family: int, devs: dict[int, str]
) -> Iterator[tuple[int, int, int, str, str | None]]:
    """One dump of the FDB (``AF_BRIDGE``) or an IPv4 or IPv6 neighbour table, reduced to entries on
    ``devs``: ``(ifindex, state, flags, mac, dst)``."""
    if fast:
        for ifindex, state, flags, lladdr, dst in sockets.rtnl().dump(family):
            if ifindex in devs:
                mac = lladdr.hex(":") if lladdr else ""
                yield ifindex, state, flags, mac, ip_text(dst) if dst else None
        return
    ipr = sockets.host()
    dump = ipr.fdb("dump") if family == socket.AF_BRIDGE else ipr.neigh("dump", family=family)
    for m in dump:
        if m["ifindex"] in devs:
            dst = m.get("NDA_DST")
            mac = str(m.get("NDA_LLADDR") or "")
            yield m["ifindex"], m["state"], m["flags"], mac, str(dst) if dst else None


class EndpointSides:
    """The endpoint interfaces inside endpoint namespaces, remembered for ``ttl`` seconds.

    With ``ttl`` > 0 (the agent: 3/4 of its resync interval, at most 10 s) a namespace read
    less than that long ago, and not forgotten since (an apply that touched it), is not read
    again: with many local endpoints those reads (about 1 ms each) would dominate every
    event-driven pass. A namespace re-created under the same name (another inode) is read
    again. 0 reads every time. Not thread-safe."""

    def __init__(self, sockets: HostSockets, ttl: float) -> None:
        self._sockets = sockets
        self.ttl = ttl
        # netns -> (when read, its inode, what its endpoint interfaces looked like)
        self._sides: dict[str, tuple[float, int | None, dict[str, EndpointSide]]] = {}

    def forget(self, netns: str | None = None) -> None:
        """Read ``netns`` (``None``: every namespace) afresh next time."""
        if netns is None:
            self._sides.clear()
        else:
            self._sides.pop(netns, None)

    def read(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], EndpointSide]:
        """The sides of ``keys`` (``(netns, ifname)``): per namespace read, a link, IPv4
        address and IPv4 route dump. Sockets of namespaces no key names any more are closed."""
        out: dict[tuple[str, str], EndpointSide] = {}
        by_ns: dict[str, list[str]] = {}
        for netns, ifname in keys:
            by_ns.setdefault(netns, []).append(ifname)
        for gone in self._sockets.endpoint_namespaces() - set(by_ns):
            self._sockets.drop_ns(gone)
        now = time.monotonic()
        for gone in set(self._sides) - set(by_ns):
            del self._sides[gone]
        for netns, ifnames in by_ns.items():
            cached = self._sides.get(netns)
            if (
                cached is not None
                and now - cached[0] < self.ttl
                and cached[1] == netns_inode(netns)
                and all(i in cached[2] for i in ifnames)
            ):
                for ifname in ifnames:
                    out[netns, ifname] = cached[2][ifname]
                continue
            sides = self._read_namespace(netns, ifnames)
            out.update(sides)
            if all(side.netns_exists for side in sides.values()):  # a missing one: ask again
                self._sides[netns] = (now, netns_inode(netns), {i: out[netns, i] for i in ifnames})
        return out

    def _read_namespace(
        self, netns: str, ifnames: list[str]
    ) -> dict[tuple[str, str], EndpointSide]:
        ns = self._sockets.ns_handle(netns)
        if ns is None:
            return {(netns, i): EndpointSide(netns, i, netns_exists=False) for i in ifnames}
        by_name = {m.get("IFLA_IFNAME"): m for m in ns.link("dump")}
        addrs: dict[int, set[str]] = {}
        gateways: dict[int, str] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for a in ns.addr("dump", family=family):
                if a["scope"] == 0:  # global: an IPv6 link-local address is none of ours
                    addrs.setdefault(a["index"], set()).add(
                        f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                    )
            for r in ns.route("dump", family=family):
                gw = r.get("RTA_GATEWAY")
                if r["dst_len"] == 0 and r.get("RTA_TABLE") == MAIN_TABLE and gw is not None:
                    gateways.setdefault(family, str(gw))
        out: dict[tuple[str, str], EndpointSide] = {}
        for ifname in ifnames:
            m = by_name.get(ifname)
            if m is None:
                out[netns, ifname] = EndpointSide(netns, ifname)
                continue
            out[netns, ifname] = EndpointSide(
                netns=netns,
                ifname=ifname,
                present=True,
                owned=owned(m),
                mac=str(m.get("IFLA_ADDRESS") or ""),
                mtu=int(m.get("IFLA_MTU")),
                up=bool(m["flags"] & IFF_UP),
                addresses=frozenset(addrs.get(m["index"], ())),
                gateway=gateways.get(socket.AF_INET),
                gateway6=gateways.get(socket.AF_INET6),
            )
        return out

"""The desired state as one host sees it. Pure.

``Snapshot`` is an immutable picture of ``/heddle/v1/`` at one revision (built by the cache);
``host_view(snapshot, host)`` reduces it to what one host must realise. Backends plan from the
``HostView`` only, so they never see records that are not theirs.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.model.records import Endpoint, Host, Network

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Decoded desired state at ``revision``; ``skipped`` lists keys whose values were invalid."""

    revision: int
    networks: Mapping[str, Network] = field(default_factory=dict)
    endpoints: Mapping[tuple[str, str], Endpoint] = field(default_factory=dict)
    hosts: Mapping[str, Host] = field(default_factory=dict)
    alive: frozenset[str] = frozenset()
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RemoteEndpoint:
    """An endpoint of the network on another host: where to send frames for ``mac``."""

    ip: str
    mac: str
    vtep: str


@dataclass(frozen=True, slots=True)
class NetworkView:
    """One network that has at least one endpoint on this host.

    ``mtu`` is the overlay MTU: the network's own, else the smallest underlay MTU among member
    hosts minus VXLAN overhead. ``flood`` are the VTEPs of the other member hosts (head-end
    replication of broadcast), sorted.
    """

    network: Network
    mtu: int
    local: tuple[Endpoint, ...]
    remote: tuple[RemoteEndpoint, ...]
    flood: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HostView:
    host: Host
    networks: tuple[NetworkView, ...]
    problems: tuple[str, ...] = ()

    def network(self, name: str) -> NetworkView | None:
        for nv in self.networks:
            if nv.network.name == name:
                return nv
        return None


@functools.lru_cache(maxsize=1 << 17)
def _ip_int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


@functools.lru_cache(maxsize=1 << 12)
def _link_local(vtep: str) -> bool:
    return ipaddress.IPv4Address(vtep).is_link_local


def host_view(snap: Snapshot, host: Host, *, link_local_vteps: bool = False) -> HostView:
    """Reduce ``snap`` to the networks ``host`` takes part in. Pure; never raises.

    Records that cannot be realised are reported in ``problems`` and left out: an endpoint of an
    unknown network, an endpoint on a host with no host record (its VTEP is unknown), an endpoint
    on a host whose VTEP is link-local unless ``link_local_vteps`` (the agent's setting; every
    other unusable VTEP is refused when the host record is decoded), an endpoint whose address is
    outside its network's subnet.

    Only networks with an endpoint on this host are looked at: a change in any other network
    is no concern of this host (its problems are reported by the hosts it concerns). Addresses
    are parsed once per process (``_ip_int``), so a pass does not re-parse every endpoint.
    """
    problems: list[str] = []
    by_net: dict[str, list[Endpoint]] = {}
    mine = {net for (net, _), ep in snap.endpoints.items() if ep.host == host.name}
    subnets: dict[str, tuple[int, int]] = {}
    for (net_name, ep_id), ep in sorted(kv for kv in snap.endpoints.items() if kv[0][0] in mine):
        net = snap.networks.get(net_name)
        if net is None:
            problems.append(f"endpoint {net_name}/{ep_id}: unknown network {net_name!r}")
            continue
        if ep.host != host.name and ep.host not in snap.hosts:
            problems.append(f"endpoint {net_name}/{ep_id}: unknown host {ep.host!r}")
            continue
        if ep.host != host.name and not link_local_vteps and _link_local(snap.hosts[ep.host].vtep):
            problems.append(
                f"endpoint {net_name}/{ep_id}: host {ep.host} has a link-local VTEP "
                "(refused unless the agent allows link-local VTEPs)"
            )
            continue
        if net_name not in subnets:
            subnets[net_name] = (int(net.network.network_address), int(net.network.netmask))
        base, mask = subnets[net_name]
        if _ip_int(ep.ip) & mask != base:
            problems.append(f"endpoint {net_name}/{ep_id}: {ep.ip} is outside {net.subnet}")
            continue
        by_net.setdefault(net_name, []).append(ep)

    views: list[NetworkView] = []
    for net_name, eps in sorted(by_net.items()):
        local = tuple(e for e in eps if e.host == host.name)
        if not local:
            continue
        net = snap.networks[net_name]
        remote_eps = [e for e in eps if e.host != host.name]
        member_hosts = {host.name} | {e.host for e in remote_eps}
        mtu = net.mtu
        if mtu is None:
            underlay = min(
                (host if h == host.name else snap.hosts[h]).underlay_mtu for h in member_hosts
            )
            mtu = underlay - VXLAN_OVERHEAD
        remote = tuple(
            RemoteEndpoint(e.ip, e.mac, snap.hosts[e.host].vtep)
            for e in remote_eps
            if snap.hosts[e.host].vtep != host.vtep
        )
        flood = tuple(sorted({r.vtep for r in remote}))
        views.append(NetworkView(net, mtu, local, remote, flood))
    return HostView(host, tuple(views), tuple(problems))

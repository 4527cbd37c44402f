"""The desired state as one host sees it. Pure.

``Snapshot`` is an immutable picture of ``/heddle/v1/`` at one revision (built by the cache);
``host_view(snapshot, host)`` reduces it to what one host must realise. Backends plan from the
``HostView`` only, so they never see records that are not theirs.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from controller.model.egress import egress_gateways
from controller.model.records import MTU_MIN6, Endpoint, Host, Network

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VXLAN6_OVERHEAD = 70  # outer Ethernet 14 + IPv6 40 + UDP 8 + VXLAN 8


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Decoded desired state at ``revision``; ``skipped`` lists keys whose values were invalid.

    ``groups`` (optional): ``endpoints`` grouped by network name -- exactly the same records --
    for a reader that keeps each network's group as the same mapping object while the network
    is unchanged (``controller/store/interest.py``): ``host_view`` then recognises unchanged
    networks by identity instead of looking at every endpoint."""

    revision: int
    networks: Mapping[str, Network] = field(default_factory=dict)
    endpoints: Mapping[tuple[str, str], Endpoint] = field(default_factory=dict)
    hosts: Mapping[str, Host] = field(default_factory=dict)
    alive: frozenset[str] = frozenset()
    skipped: tuple[str, ...] = ()
    groups: Mapping[str, Mapping[tuple[str, str], Endpoint]] | None = None


@dataclass(frozen=True, slots=True)
class RemoteEndpoint:
    """An endpoint of the network on another host: where to send frames for ``mac``; its
    addresses (``ip`` IPv4, ``ip6`` IPv6: those of its network's families)."""

    ip: str | None
    mac: str
    vtep: str
    ip6: str | None = None

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a for a in (self.ip, self.ip6) if a is not None)


@dataclass(frozen=True, slots=True)
class NetworkView:
    """One network that has at least one endpoint on this host.

    ``mtu`` is the overlay MTU: the network's own, else the smallest underlay MTU among member
    hosts minus VXLAN overhead (50 bytes over IPv4 VTEPs, 70 over IPv6 ones). ``flood`` are the
    VTEPs of the other member hosts (head-end replication of broadcast), sorted.
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
    return int(ipaddress.ip_address(ip))


def _outside(net: Network, ep: Endpoint) -> str | None:
    """Why ``ep``'s addresses do not fit ``net``'s families and subnets, or None. Pure."""
    for addr, subnet, family in ((ep.ip, net.network, "IPv4"), (ep.ip6, net.network6, "IPv6")):
        if subnet is None and addr is not None:
            return f"{addr} is an {family} address and the network has no {family} subnet"
        if subnet is not None and addr is None:
            return f"no {family} address, and the network has subnet {subnet}"
        if subnet is not None and addr is not None:
            mask = int(subnet.netmask)
            if _ip_int(addr) & mask != int(subnet.network_address):
                return f"{addr} is outside {subnet}"
    return None


@functools.lru_cache(maxsize=1 << 12)
def _link_local(vtep: str) -> bool:
    return ipaddress.ip_address(vtep).is_link_local


class ViewMemo:
    """What ``host_view`` computed for each network last time, reused while that network's
    inputs are the very same objects (its record, its endpoints, their hosts' records).

    The snapshots an agent reads share the record objects of everything that did not change
    (``controller/store/cache.py`` decodes a record once), so a change in one network leaves
    every other network's inputs identical and their views are not rebuilt. Identity is safe
    as a key because the memo holds the objects it compares: none of them can be freed and
    its address reused while remembered. Not thread-safe: one per reconciler."""

    def __init__(self) -> None:
        self._nets: dict[str, tuple[tuple[object, ...], NetworkView | None, tuple[str, ...]]] = {}
        self.reused = 0

    def get(
        self, name: str, inputs: tuple[object, ...]
    ) -> tuple[NetworkView | None, tuple[str, ...]] | None:
        got = self._nets.get(name)
        if got is None or len(got[0]) != len(inputs):
            return None
        if all(a is b for a, b in zip(got[0], inputs, strict=True)):
            self.reused += 1
            return got[1], got[2]
        return None

    def put(self, name: str, inputs: tuple[object, ...], nv: NetworkView | None,
            problems: tuple[str, ...]) -> None:  # fmt: skip
        self._nets[name] = (inputs, nv, problems)

    def keep_only(self, names: set[str]) -> None:
        for gone in [n for n in self._nets if n not in names]:
            del self._nets[gone]


def host_view(
    snap: Snapshot, host: Host, *, link_local_vteps: bool = False, memo: ViewMemo | None = None
) -> HostView:
    """Reduce ``snap`` to the networks ``host`` takes part in. Pure; never raises.

    Records that cannot be realised are reported in ``problems`` and left out: an endpoint of an
    unknown network, an endpoint on a host with no host record (its VTEP is unknown), an endpoint
    on a host whose VTEP is link-local unless ``link_local_vteps`` (the agent's setting; every
    other unusable VTEP is refused when the host record is decoded), an endpoint whose address is
    outside its network's subnet, or that lacks an address of one of its network's families (or
    has one of a family the network has none of); a network whose member hosts' VTEPs mix
    IPv4 and IPv6; a network with an IPv6 subnet whose automatic MTU is below IPv6's 1280.

    Only networks with an endpoint on this host are looked at: a change in any other network
    is no concern of this host (its problems are reported by the hosts it concerns). Addresses
    are parsed once per process (``_ip_int``), so a pass does not re-parse every endpoint.
    ``memo`` (optional) skips the networks whose inputs did not change since the last call
    (``ViewMemo``); the result is the same with or without it.
    """
    if snap.groups is not None and memo is not None:
        return _grouped_view(snap, snap.groups, host, link_local_vteps, memo)
    mine = {net for (net, _), ep in snap.endpoints.items() if ep.host == host.name}
    by_net: dict[str, list[tuple[str, Endpoint]]] = {n: [] for n in mine}
    for (net_name, ep_id), ep in snap.endpoints.items():
        if net_name in by_net:
            by_net[net_name].append((ep_id, ep))
    problems: list[str] = []
    views: list[NetworkView] = []
    for net_name in sorted(by_net):
        eps = sorted(by_net[net_name], key=lambda kv: kv[0])
        net = snap.networks.get(net_name)
        inputs: tuple[object, ...] = (
            host, link_local_vteps, net, *(ep for _, ep in eps),
            *(snap.hosts.get(ep.host) for _, ep in eps),
        )  # fmt: skip
        known = memo.get(net_name, inputs) if memo is not None else None
        if known is None:
            known = _network_view(snap, host, net_name, net, eps, link_local_vteps)
            if memo is not None:
                memo.put(net_name, inputs, *known)
        nv, found = known
        problems.extend(found)
        if nv is not None:
            views.append(nv)
    if memo is not None:
        memo.keep_only(mine)
    return _with_egress(host, views, problems)


def _grouped_view(
    snap: Snapshot,
    groups: Mapping[str, Mapping[tuple[str, str], Endpoint]],
    host: Host,
    link_local_vteps: bool,
    memo: ViewMemo,
) -> HostView:
    """``host_view`` of a snapshot with ``groups``: a network whose group, record and host
    records are the very objects of the last call reuses its result (a network with no
    endpoint here is remembered as nothing), so an unchanged network costs one lookup."""
    problems: list[str] = []
    views: list[NetworkView] = []
    for net_name in sorted(groups):
        group = groups[net_name]
        net = snap.networks.get(net_name)
        inputs: tuple[object, ...] = (host, link_local_vteps, net, group, snap.hosts)
        known = memo.get(net_name, inputs)
        if known is None:
            if any(ep.host == host.name for ep in group.values()):
                eps = sorted(((k[1], ep) for k, ep in group.items()), key=lambda kv: kv[0])
                known = _network_view(snap, host, net_name, net, eps, link_local_vteps)
            else:
                known = (None, ())
            memo.put(net_name, inputs, *known)
        nv, found = known
        problems.extend(found)
        if nv is not None:
            views.append(nv)
    memo.keep_only(set(groups))
    return _with_egress(host, views, problems)


def _with_egress(host: Host, views: list[NetworkView], problems: list[str]) -> HostView:
    """The view, with the reasons egress is refused here (``egress_gateways``) reported."""
    _, refused = egress_gateways((nv.network for nv in views), host.backend)
    return HostView(host, tuple(views), (*problems, *refused))


def _network_view(
    snap: Snapshot,
    host: Host,
    net_name: str,
    net: Network | None,
    eps: list[tuple[str, Endpoint]],
    link_local_vteps: bool,
) -> tuple[NetworkView | None, tuple[str, ...]]:
    """One network of ``host_view``: its view (None if nothing of it can be realised here)
    and its problems, in endpoint id order. Pure."""
    problems: list[str] = []
    usable: list[Endpoint] = []
    for ep_id, ep in eps:
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
        outside = _outside(net, ep)
        if outside is not None:
            problems.append(f"endpoint {net_name}/{ep_id}: {outside}")
            continue
        usable.append(ep)
    local = tuple(e for e in usable if e.host == host.name)
    if net is None or not local:
        return None, tuple(problems)
    remote_eps = [e for e in usable if e.host != host.name]
    member_hosts = {host.name} | {e.host for e in remote_eps}
    records = [host if h == host.name else snap.hosts[h] for h in sorted(member_hosts)]
    six = {":" in r.vtep for r in records}
    if len(six) > 1:
        vteps = ", ".join(f"{r.name} {r.vtep}" for r in records)
        why = (f"network {net_name}: its hosts' VTEPs mix IPv4 and IPv6 ({vteps}): one family "
               "per network; not built")  # fmt: skip
        return None, (*problems, why)
    overhead = VXLAN6_OVERHEAD if six == {True} else VXLAN_OVERHEAD
    mtu = net.mtu
    if mtu is None:
        underlay = min(r.underlay_mtu for r in records)
        mtu = underlay - overhead
        if net.subnet6 is not None and mtu < MTU_MIN6:
            why = (
                f"network {net_name}: its overlay MTU would be {mtu} (the smallest underlay "
                f"MTU of its hosts, {underlay}, less {overhead}), below IPv6's {MTU_MIN6}"
            )
            return None, (*problems, why)
    remote = tuple(
        RemoteEndpoint(e.ip, e.mac, snap.hosts[e.host].vtep, e.ip6)
        for e in remote_eps
        if snap.hosts[e.host].vtep != host.vtep
    )
    flood = tuple(sorted({r.vtep for r in remote}))
    return NetworkView(net, mtu, local, remote, flood), tuple(problems)


def changed_networks(old: HostView, new: HostView) -> frozenset[str] | None:
    """Names of the networks whose part of the view differs (added, removed or changed);
    ``None`` when the host itself changed (every network's devices depend on it)."""
    if old.host != new.host:
        return None
    before = {nv.network.name: nv for nv in old.networks}
    after = {nv.network.name: nv for nv in new.networks}
    return frozenset(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))


def changed_locals(
    old: Iterable[NetworkView], new: Iterable[NetworkView]
) -> frozenset[tuple[str, str]]:
    """The local endpoints (network, id) whose own devices may change from the networks ``old``
    to ``new`` (each network at most once on a side): every one of a network that came, went
    or whose record or MTU changed; in the others, those added, removed or changed. Pure."""
    before = {nv.network.name: nv for nv in old}
    after = {nv.network.name: nv for nv in new}
    out: set[tuple[str, str]] = set()
    for name in before.keys() | after.keys():
        a, b = before.get(name), after.get(name)
        was = {(ep.network, ep.id): ep for ep in a.local} if a is not None else {}
        now = {(ep.network, ep.id): ep for ep in b.local} if b is not None else {}
        if a is None or b is None or (a.network, a.mtu) != (b.network, b.mtu):
            out |= was.keys() | now.keys()
        else:
            out |= {k for k in was.keys() | now.keys() if was.get(k) != now.get(k)}
    return frozenset(out)

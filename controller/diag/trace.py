"""``heddle trace``: the path from one endpoint to an address, hop by hop. Pure.

The desired state (a ``Snapshot``) says which endpoints and hosts are involved; the two hosts'
agents say what their data planes hold (``NetworkFacts``, or the reason they could not be
asked). Each hop is ``ok``, ``broken`` or ``unknown`` with its evidence; the path is whole only
when every hop is ok, and the first hop that is not is the one to look at.

Hops across hosts: source host (its agent answered) -> source address (the endpoint's
interface in its namespace: up, the address with a prefix that covers the destination, the
network's MTU) -> source veth -> source bridge -> source tunnel -> forwarding entry (the
destination MAC -> a VTEP) -> destination VTEP (that of the destination host's record, and
the host is alive) -> destination host (its agent answered) -> destination accepts the VNI from
the source VTEP -> destination bridge -> destination veth -> destination address. On one host
the tunnel hops are left out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from controller.diag.facts import EndpointFacts, LinkFacts, NetworkFacts
from controller.model.errors import InvalidRecord, NotFound
from controller.model.records import Endpoint
from controller.model.view import Snapshot

Status = Literal["ok", "broken", "unknown"]


@dataclass(frozen=True, slots=True)
class Hop:
    name: str
    host: str
    status: Status
    evidence: str


@dataclass(frozen=True, slots=True)
class TraceReport:
    network: str
    source: Endpoint
    dest: Endpoint
    hops: tuple[Hop, ...]

    @property
    def first_bad(self) -> Hop | None:
        """The first hop that is not ok (None: the path is whole)."""
        return next((h for h in self.hops if h.status != "ok"), None)

    @property
    def whole(self) -> bool:
        return self.first_bad is None


def resolve_endpoints(
    snap: Snapshot, network: str, source: str, dest: str
) -> tuple[Endpoint, Endpoint]:
    """The endpoints named by ``source`` (an endpoint id or address) and ``dest`` (an address).

    Raises ``NotFound`` for an unknown network or endpoint, ``InvalidRecord`` for an address
    that is not one (neither helps to retry)."""
    if network not in snap.networks:
        raise NotFound(f"no network {network!r}")
    eps = {ep_id: ep for (net, ep_id), ep in snap.endpoints.items() if net == network}
    by_ip = {ip: ep for ep in eps.values() for ip in ep.addresses}
    src = eps.get(source) or by_ip.get(_canonical(source))
    if src is None:
        raise NotFound(f"no endpoint {source!r} (id or address) in network {network}")
    try:
        dest = str(ipaddress.ip_address(dest))
    except ValueError:
        raise InvalidRecord(f"destination {dest!r} is not an address") from None
    dst = by_ip.get(dest)
    if dst is None:
        raise NotFound(f"no endpoint has address {dest} in network {network}")
    return src, dst


def _canonical(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _of_family(ep: Endpoint, six: bool) -> str:
    """``ep``'s address of one family (its only one when it has no other)."""
    return (ep.ip6 if six else ep.ip) or ep.address


def _ok(name: str, host: str, evidence: str) -> Hop:
    return Hop(name, host, "ok", evidence)


def _broken(name: str, host: str, evidence: str) -> Hop:
    return Hop(name, host, "broken", evidence)


def _link_hop(name: str, host: str, link: LinkFacts, mtu: int, need_attached: bool) -> Hop:
    if not link.present:
        return _broken(name, host, link.detail or f"{link.name} is missing")
    facts = f"{link.name}: {'up' if link.up else 'DOWN'}" + (
        f", mtu {link.mtu}" if link.mtu else ""
    )
    facts += f", {link.detail}" if link.detail else ""
    if not link.up:
        return _broken(name, host, facts)
    if link.mtu and link.mtu != mtu:
        return _broken(name, host, f"{facts}: the network's MTU is {mtu}")
    if need_attached and not link.attached:
        return _broken(name, host, f"{facts}: not attached to the network's switch")
    return _ok(name, host, facts)


def _address_hop(name: str, ep: EndpointFacts, facts: NetworkFacts, towards: str) -> Hop:
    side = ep.side
    where = f"{side.ifname} in {side.netns}"
    if not side.known:
        return Hop(name, facts.host, "unknown", f"{side.ifname}: not observable ({side.detail})")
    if not side.present:
        return _broken(name, facts.host, side.detail or f"{where} is missing")
    addrs = ", ".join(side.addresses) or "no address"
    text = f"{where}: {'up' if side.up else 'DOWN'}, {addrs}, mtu {side.mtu}"
    if not side.up:
        return _broken(name, facts.host, text)
    if side.mtu != facts.mtu:
        return _broken(name, facts.host, f"{text}: the network's MTU is {facts.mtu}")
    target = ipaddress.ip_address(towards)
    own = [a for a in ep.ip.split(",") if ipaddress.ip_address(a).version == target.version]
    mine = [a for a in side.addresses if a.split("/")[0] in own]
    if not mine:
        return _broken(name, facts.host, f"{text}: {', '.join(own) or ep.ip} is not configured")
    iface = ipaddress.ip_interface(mine[0])
    if target not in iface.network and side.gateway is None:
        return _broken(name, facts.host, f"{text}: no route to {towards}")
    return _ok(name, facts.host, f"{text}; {towards} on-link via {mine[0]}")


def trace_path(
    snap: Snapshot,
    src: Endpoint,
    dst: Endpoint,
    src_facts: NetworkFacts | str,
    dst_facts: NetworkFacts | str,
    six: bool = False,
) -> TraceReport:
    """The hops from ``src`` to ``dst`` (see the module docstring), over IPv6 with ``six``
    (the addresses checked are each side's of that family). A ``str`` in place of facts is why
    that host's agent could not be asked."""
    net = snap.networks[src.network]
    hops: list[Hop] = []

    def report() -> TraceReport:
        return TraceReport(net.name, src, dst, tuple(hops))

    if isinstance(src_facts, str):
        hops.append(_broken("source host", src.host, src_facts))
        return report()
    hops.append(_ok("source host", src.host, f"agent answered ({src_facts.backend})"))
    s_ep = src_facts.endpoint(src.id)
    if s_ep is None:
        hops.append(_broken("source address", src.host, "the agent does not realise this endpoint"))
        return report()
    hops.append(_address_hop("source address", s_ep, src_facts, _of_family(dst, six)))
    hops.append(_link_hop("source veth", src.host, s_ep.veth, src_facts.mtu, False))
    bridge = _link_hop("source bridge", src.host, src_facts.bridge, src_facts.mtu, False)
    if bridge.status == "ok" and not s_ep.veth.attached:
        bridge = _broken(
            "source bridge", src.host, f"{s_ep.veth.name} is not in {src_facts.bridge.name}"
        )
    hops.append(bridge)
    same_host = src.host == dst.host
    if not same_host:
        hops += _tunnel_hops(snap, src, dst, src_facts, dst_facts)
        if isinstance(dst_facts, str):
            return report()
    d_facts = src_facts if same_host else dst_facts
    assert not isinstance(d_facts, str)
    d_ep = d_facts.endpoint(dst.id)
    if d_ep is None:
        hops.append(
            _broken("destination veth", dst.host, "the agent does not realise this endpoint")
        )
        return report()
    if not same_host:
        hops.append(_link_hop("destination bridge", dst.host, d_facts.bridge, d_facts.mtu, False))
    veth = _link_hop("destination veth", dst.host, d_ep.veth, d_facts.mtu, True)
    if veth.status == "ok" and not d_ep.delivers:
        veth = _broken(
            "destination veth",
            dst.host,
            f"{veth.evidence}: frames for {dst.mac} are not delivered to it",
        )
    hops.append(veth)
    hops.append(_address_hop("destination address", d_ep, d_facts, _of_family(src, six)))
    return report()


def _tunnel_hops(
    snap: Snapshot, src: Endpoint, dst: Endpoint, sf: NetworkFacts, df: NetworkFacts | str
) -> list[Hop]:
    hops = [_link_hop("source tunnel", src.host, sf.tunnel, sf.mtu, True)]
    vtep = sf.forwarding.get(dst.mac)
    if vtep is None:
        hops.append(
            _broken("forwarding entry", src.host, f"no entry for {dst.mac} on {sf.tunnel.name}")
        )
    else:
        hops.append(_ok("forwarding entry", src.host, f"{dst.mac} -> {vtep} on {sf.tunnel.name}"))
    want = snap.hosts[dst.host].vtep if dst.host in snap.hosts else None
    if want is None:
        hops.append(_broken("destination VTEP", dst.host, f"host {dst.host} has no host record"))
    elif vtep is not None and vtep != want:
        hops.append(
            _broken(
                "destination VTEP", dst.host, f"entry points at {vtep}, {dst.host}'s VTEP is {want}"
            )
        )
    elif dst.host not in snap.alive:
        hops.append(
            _broken(
                "destination VTEP",
                dst.host,
                f"{want}: {dst.host} is not alive (its agent is not running)",
            )
        )
    else:
        hops.append(_ok("destination VTEP", dst.host, f"{want} ({dst.host}, alive)"))
    if isinstance(df, str):
        hops.append(_broken("destination host", dst.host, df))
        return hops
    hops.append(_ok("destination host", dst.host, f"agent answered ({df.backend})"))
    accepts = _link_hop("destination accepts VNI", dst.host, df.tunnel, df.mtu, True)
    if accepts.status == "ok":
        if df.accepts is None:
            accepts = _ok(
                accepts.name, dst.host, f"VNI {df.vni} from any source: {accepts.evidence}"
            )
        elif sf.vtep in df.accepts:
            accepts = _ok(
                accepts.name, dst.host, f"VNI {df.vni} from {sf.vtep}: {accepts.evidence}"
            )
        else:
            accepted = ", ".join(df.accepts) or "nobody"
            accepts = _broken(
                accepts.name, dst.host, f"VNI {df.vni} accepted from {accepted}, not from {sf.vtep}"
            )
    hops.append(accepts)
    return hops

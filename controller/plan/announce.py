"""Neighbour announcements: which local endpoints to tell about an address that just became
reachable (not the kernel's netlink announcements of ``controller/dataplane/kernel_events.py``).
Pure.

Why: an endpoint that tried to reach an address before heddle could carry traffic to it has a
neighbour entry waiting (``INCOMPLETE``, or ``FAILED`` once it gave up) and asks again only on
its own schedule -- every second with Linux's defaults (``retrans_time_ms`` 1000), never sooner
than every 10 ms. Once a pass has put in what makes a new address reachable from this host
(FDB and neighbour entries or flows for a remote endpoint, the veth of a local one), the agent
tells the endpoints that were already here: a gratuitous ARP (IPv4) or an unsolicited neighbour
advertisement with the override flag (IPv6) for the new binding, sent into each of them through
its own port (``controller/dataplane/announce.py``). Linux updates an entry it already has from
either and sends what it queued at once; it creates none (``arp_accept`` and
``accept_untracked_na`` off, their defaults), so an endpoint that never asked is not changed.
An address that moved to another MAC is corrected the same way.

What is announced is what the agent's view already says: records that passed validation and
conflict resolution (``controller/model/view.py``), nothing learnt from the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.model.naming import veth_host_name
from controller.model.view import HostView, NetworkView

#: A pass whose announcements would exceed this many frames sends none (a host joining with
#: thousands of endpoints is not what anyone was waiting for; their entries resolve as usual).
MAX_FRAMES = 1024


@dataclass(frozen=True, slots=True)
class Announcement:
    """Tell the local endpoint behind ``port`` (its MAC ``to_mac``) that ``ip`` is at ``mac``.
    ``ip`` is IPv4 (a gratuitous ARP) or IPv6 (a neighbour advertisement)."""

    port: str
    to_mac: str
    ip: str
    mac: str

    @property
    def six(self) -> bool:
        return ":" in self.ip


def _bindings(nv: NetworkView) -> dict[str, str]:
    """Every address of the network this host carries traffic to -> its MAC. (Attributes
    read directly: at thousands of endpoints this runs in every pass that changes the
    network; 5,000 endpoints take ~3 ms here.)"""
    out = {ep.ip: ep.mac for ep in nv.local if ep.ip is not None}
    out.update({ep.ip6: ep.mac for ep in nv.local if ep.ip6 is not None})
    out.update({r.ip: r.mac for r in nv.remote if r.ip is not None})
    out.update({r.ip6: r.mac for r in nv.remote if r.ip6 is not None})
    return out


def plan_announcements(old: HostView | None, new: HostView) -> tuple[Announcement, ...]:
    """The announcements a successful pass from ``old`` (the last view realised; ``None``:
    none yet, announce nothing) to ``new`` owes: for every address of a network whose MAC is
    new or changed, one to each local endpoint of that network that ``old`` already had (with
    the same MAC) and that has an address of that family -- never to the address's own
    endpoint. Empty when that would be more than ``MAX_FRAMES``. Deterministic."""
    if old is None:
        return ()
    out: list[Announcement] = []
    olds = {nv.network.name: nv for nv in old.networks}
    for nv in new.networks:
        before = olds.get(nv.network.name)
        if before is None or before is nv:  # new here, or the very same view (unchanged)
            continue
        kept = {(ep.id, ep.mac) for ep in before.local}
        if not any((ep.id, ep.mac) in kept for ep in nv.local):
            continue  # nobody here could be waiting
        fresh = _fresh(_bindings(before), _bindings(nv))
        if not fresh:
            continue
        for ep in nv.local:
            if (ep.id, ep.mac) not in kept:
                continue
            own = {ep.ip, ep.ip6}
            port = veth_host_name(ep.network, ep.id)
            for ip, mac in fresh:
                if ip not in own and (ep.ip6 if ":" in ip else ep.ip) is not None:
                    out.append(Announcement(port, ep.mac, ip, mac))
        if len(out) > MAX_FRAMES:
            return ()
    return tuple(out)


def _fresh(before: dict[str, str], now: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(now.items() - before.items())

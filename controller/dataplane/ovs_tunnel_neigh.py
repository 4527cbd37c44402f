"""``TunnelNeighbours``: ovs-vswitchd's tunnel-neighbour cache, read and filled ahead of
traffic (``netdev`` datapath; docs/platform.md O7).

OVS resolves a VTEP's MAC only when a packet needs it, and drops that packet. The agent reads
the cache (``tnl/neigh/show``), asks missing member VTEPs itself from br-phy, with ARP
(``dataplane/vtep_arp.py``) or, on an IPv6 underlay, neighbour discovery
(``dataplane/vtep_nd.py``), and sets the answers (``tnl/neigh/set``), so the first packet finds
the entry. Entries OVS holds are refreshed by the traffic that uses them; one that aged out is
missing from the next full observation and resolved again. A VTEP that does not answer is
remembered for ``retry`` seconds, so a member host that is down costs one ARP wait per
interval, not one per pass. Not thread-safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from controller.dataplane import vtep_arp, vtep_nd
from controller.dataplane.backend import OpFailed
from controller.dataplane.ovs_unixctl import Unixctl, UnixctlError, parse_tunnel_neighbours
from controller.plan.ovs_ops import ResolveVteps

log = logging.getLogger("heddle.ovs")


class TunnelNeighbours:
    """See the module docstring. ``netns``: the host namespace (``None``: ours); ``rundir``:
    ovs-vswitchd's run directory (its control socket)."""

    def __init__(
        self,
        netns: str | None,
        rundir: str,
        retry: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.netns = netns
        self.unixctl = Unixctl(rundir)
        self.retry = retry
        self._clock = clock
        self._silent: dict[str, float] = {}  # VTEP -> when it last failed to answer

    def close(self) -> None:
        self.unixctl.close()

    def cached(self, phy: str) -> frozenset[str]:
        """The VTEPs OVS holds a MAC for on ``phy``. Raises ``UnixctlError``."""
        return frozenset(parse_tunnel_neighbours(self.unixctl.call("tnl/neigh/show"), phy))

    def unanswered(self) -> frozenset[str]:
        """VTEPs asked less than ``retry`` seconds ago that did not answer."""
        now = self._clock()
        self._silent = {ip: t for ip, t in self._silent.items() if now - t < self.retry}
        return frozenset(self._silent)

    def resolve(self, op: ResolveVteps, phy_mac: str) -> None:
        """Ask ``op.peers`` from ``op.vtep`` at ``phy_mac`` on ``op.phy``; set every answer in
        OVS. Silent VTEPs are logged and remembered, not failed (OVS still resolves them on
        demand). Raises ``OpFailed`` when the socket or OVS's control socket fails."""
        ask = vtep_nd.resolve if ":" in op.vtep else vtep_arp.resolve  # one family per host
        try:
            got = ask(self.netns, op.phy, phy_mac, op.vtep, op.peers)
        except OSError as exc:
            raise OpFailed(f"neighbour resolution on {op.phy}: {exc}") from exc
        try:
            for ip, mac in sorted(got.items()):
                self.unixctl.call("tnl/neigh/set", op.phy, ip, mac)
        except UnixctlError as exc:
            raise OpFailed(str(exc)) from exc
        silent = [ip for ip in op.peers if ip not in got]
        now = self._clock()
        for ip in op.peers:
            if ip in got:
                self._silent.pop(ip, None)
            else:
                self._silent[ip] = now
        if silent:
            log.warning("member VTEP(s) %s did not answer on %s: their first tunnelled "
                        "packet waits for OVS to resolve them; asked again in %.0f s",
                        ", ".join(silent), op.phy, self.retry)  # fmt: skip

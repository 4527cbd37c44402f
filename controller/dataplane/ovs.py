"""``OvsDataPlane``: the Open vSwitch backend (README.md "Open vSwitch backend").

It combines five drivers, each addressed explicitly at one OVS instance or namespace:

* ``Ovsdb`` (``dataplane.ovsdb``): bridges and ports through the OVSDB IDL; writes wait for
  ovs-vswitchd and fail clearly on ofport -1;
* ``OpenFlow`` (``dataplane.openflow``): whole tables and deltas in atomic bundles, and dumps
  by cookie, over a persistent OpenFlow 1.4 connection per bridge;
* ``TunnelNeighbours`` (``dataplane.ovs_tunnel_neigh``, ``netdev``): ovs-vswitchd's
  tunnel-neighbour cache, read and filled with member VTEPs ahead of traffic;
* ``KernelDataPlane`` (the kernel backend, reused as it is): observation of heddle's links and of
  the endpoint sides, and the ``ConfigureEndpoint`` / ``DelLink`` ops;
* ``HostLinks`` (``dataplane.ovs_host``): veths without a bridge master, TX checksum offload,
  the userspace-tunnelling underlay.

ovs-vswitchd restarts: a new ovs-vswitchd has empty tables, which the next pass sees and fixes
(``plan.ovs``). To make that pass happen at once, a ``VswitchdWatch`` holds an OpenFlow
connection to the integration bridge and calls ``on_change`` (the reconciler's wake-up) when it
breaks and when it comes back; with ``restore_wait`` the restarted ovs-vswitchd also waits for
the flows (``ArmFlowRestoreWait``) instead of forwarding on an empty table.

Failure policy: ``backend.apply_all`` (an op that fails is recorded, dependent ops are skipped,
the rest is applied, one ``DataPlaneError`` at the end). Not thread-safe apart from the watch
thread, which only calls ``on_change``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Self

from pyroute2 import NetlinkError

from controller.dataplane.backend import DataPlaneError, OpFailed, apply_all
from controller.dataplane.kernel import KernelDataPlane
from controller.dataplane.kernel_host import HostSockets
from controller.dataplane.openflow import OpenFlow, OpenFlowError, VswitchdWatch, rundir_of
from controller.dataplane.ovs_host import HostLinks, set_tx_checksum
from controller.dataplane.ovs_tunnel_neigh import TunnelNeighbours
from controller.dataplane.ovs_unixctl import UnixctlError
from controller.dataplane.ovsdb import Ovsdb, OvsdbError
from controller.diag.facts import NetworkFacts
from controller.diag.ovs_facts import ovs_facts
from controller.model.ovs_state import OvsState
from controller.model.view import HostView
from controller.plan.flows import P_DEFAULT, P_ICMP6_GUARD, P_TUNNEL_DROP, T_CLASSIFY
from controller.plan.kernel import endpoint_keys
from controller.plan.kernel_ops import ConfigureEndpoint, DelLink
from controller.plan.ovs import owned_counts, plan_ovs
from controller.plan.ovs_ops import (
    ArmFlowRestoreWait,
    AwaitOvsPort,
    BeginFlowRestore,
    DelOvsBridge,
    DelOvsPort,
    DisableTxChecksum,
    EndFlowRestore,
    EnsureOvsBridge,
    EnsureOvsPort,
    EnsurePortVeth,
    EnsureUnderlay,
    ModFlows,
    OvsOp,
    ReplaceFlows,
    ResolveVteps,
)
from controller.plan.ovsdb import (
    DEFAULT_BRIDGE,
    DEFAULT_PHY_BRIDGE,
    TUNNEL_OFPORT,
    OvsLayout,
    parse_datapath,
)

log = logging.getLogger("heddle.ovs")


class OvsDataPlane:
    """The ovs backend: ``observe`` / ``plan`` (pure, ``plan_ovs``) / ``apply`` / ``close``.

    ``vtep``: this host's VTEP (the planner reads it from the view; kept for parity with
    ``KernelDataPlane``). ``ovsdb``: the OVSDB remote (``--ovsdb``, e.g.
    ``unix:/var/run/openvswitch/db.sock``). ``datapath``: ``system`` or ``netdev``
    (``--ovs-datapath``); ``netdev`` needs ``underlay_dev`` (``--underlay-dev``), the NIC that
    carries the VTEP, which the agent then puts into br-phy, moving the VTEP address onto br-phy.
    ``rundir``: where ovs-vswitchd's ``<bridge>.mgmt`` sockets are (default: the directory of a
    ``unix:`` OVSDB socket, else ``/var/run/openvswitch``). ``netns``: the namespace to manage as
    the host (``None``, production: the agent's own; ovs-vswitchd must run in it).
    ``restore_wait``: keep ``flow-restore-wait`` armed (switch-wide; turn off on a shared OVS).
    ``on_change``: called from a watch thread when ovs-vswitchd goes away or comes back (pass the
    reconciler's ``Trigger.fire``); ``None`` starts no thread. ``endpoint_ttl``: as
    ``KernelDataPlane``'s (endpoint namespaces read at most that often unless an apply touched
    them).

    Raises ``InvalidRecord`` (a ``HeddleError``) for an unknown datapath or an impossible layout;
    nothing else at construction (connections open on first use)."""

    def __init__(
        self,
        vtep: str,
        *,
        ovsdb: str,
        datapath: str = "system",
        underlay_dev: str | None = None,
        rundir: str | None = None,
        bridge: str = DEFAULT_BRIDGE,
        phy_bridge: str = DEFAULT_PHY_BRIDGE,
        netns: str | None = None,
        restore_wait: bool = True,
        on_change: Callable[[], None] | None = None,
        timeout: float = 10.0,
        endpoint_ttl: float = 0.0,
    ) -> None:
        self.vtep = vtep
        self.layout = OvsLayout(
            datapath=parse_datapath(datapath),
            bridge=bridge,
            underlay_dev=underlay_dev,
            phy_bridge=phy_bridge,
            restore_wait=restore_wait,
        )
        self.netns = netns
        self.ovsdb = Ovsdb(ovsdb, timeout)
        self.openflow = OpenFlow(rundir or rundir_of(ovsdb), timeout=max(timeout, 30.0))
        self._neighbours = TunnelNeighbours(netns, rundir or rundir_of(ovsdb))
        sockets = HostSockets(netns)  # one socket per namespace for both drivers
        self._kernel = KernelDataPlane(
            vtep, netns=netns, filters=False, endpoint_ttl=endpoint_ttl, sockets=sockets
        )
        self._host = HostLinks(sockets)
        self._on_change = on_change
        self._watch: VswitchdWatch | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    observed_in_full = True  # every observe reads (DataPlane.observed_in_full)
    settled = True  # nothing remembered, nothing to settle (DataPlane.settled)

    def forget(self) -> None:
        """Nothing to forget: every observe reads afresh (``DataPlane.forget``)."""

    def close(self) -> None:
        """Stop the watch, close every connection. Idempotent; the instance reopens on use."""
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        self.ovsdb.close()
        self.openflow.close()
        self._neighbours.close()
        self._kernel.close()  # and the sockets HostLinks shares

    def _ensure_watch(self) -> None:
        if self._on_change is not None and self._watch is None:
            path = self.openflow.mgmt_socket(self.layout.bridge)
            self._watch = VswitchdWatch(path, self._on_change).start()

    # -- observe ------------------------------------------------------------------------------

    def observe(self, view: HostView) -> OvsState:
        """Heddle's OVSDB rows, its flows on its bridges, its links and endpoint sides, and in
        ``netdev`` mode TX checksum state, the underlay and OVS's tunnel-neighbour cache.
        Read-only. Raises ``DataPlaneError`` when OVSDB, ovs-vswitchd or the host namespace
        cannot be read."""
        self._ensure_watch()
        try:
            db = self.ovsdb.observe(self.layout.bridges)
            flows = {
                name: self.openflow.dump(name)
                for name in self.layout.bridges
                if name in db.bridges and db.bridges[name].owned
            }
        except (OvsdbError, OpenFlowError) as exc:
            raise DataPlaneError("observe", f"cannot read Open vSwitch: {exc}") from exc
        kernel = self._kernel.observe(view)
        if not self.layout.netdev:
            return OvsState(ovsdb=db, flows=flows, kernel=kernel)
        assert self.layout.underlay_dev is not None
        try:
            tx = {key: self._host.tx_checksum(*key) for key in endpoint_keys(view)}
            underlay = self._host.observe_underlay(self.layout.underlay_dev, self.layout.phy_bridge)
        except (NetlinkError, OSError) as exc:
            raise DataPlaneError("observe", f"cannot read host links: {exc}") from exc
        try:
            cached = self._neighbours.cached(self.layout.phy_bridge)
        except UnixctlError as exc:
            raise DataPlaneError("observe", f"cannot read Open vSwitch: {exc}") from exc
        underlay = replace(
            underlay, tunnel_neighbours=cached, unanswered=self._neighbours.unanswered()
        )
        return OvsState(ovsdb=db, flows=flows, kernel=kernel, tx_checksum=tx, underlay=underlay)

    def unchanged(self, state: OvsState) -> bool:
        """Whether OVSDB still holds ``state.ovsdb``: read from the IDL, which OVSDB's own
        notifications keep current, so it costs no process and no round trip beyond taking
        the notifications in. False when OVSDB cannot be read. (Flow tables have no such
        notifications here: a flow changed by someone else is repaired by the next full
        observation -- the periodic resync, or at once after an ovs-vswitchd restart, which
        the watch reports.)"""
        try:
            return self.ovsdb.observe(self.layout.bridges) == state.ovsdb
        except OvsdbError:
            return False

    # -- plan / apply -------------------------------------------------------------------------

    def plan(self, view: HostView, actual: OvsState) -> tuple[OvsOp, ...]:
        """Pure; see ``controller.plan.ovs.plan_ovs``."""
        return plan_ovs(self.layout, view, actual)

    def inventory(self, view: HostView, actual: OvsState) -> Mapping[str, int]:
        """Pure; see ``controller.plan.ovs.owned_counts``."""
        return owned_counts(self.layout, view, actual)

    def facts(self, view: HostView, network: str, actual: OvsState) -> NetworkFacts | None:
        """Pure; see ``controller.diag.ovs_facts``."""
        nv = view.network(network)
        return None if nv is None else ovs_facts(self.layout, view.host, nv, actual)

    def drops(self) -> Mapping[str, int]:
        """The packet counts of table 0's drop flows (``controller.plan.flows``): ``vxlan``
        (tunnel packets from no member, or for a VNI the sender is no member of) and ``spoof``
        (the default drop: forged sources on endpoint ports; and the ICMPv6 router and
        advertisement messages no endpoint may send). ``{}`` before the table exists.
        Raises ``DataPlaneError`` if OVS cannot be read."""
        try:
            counts = self.openflow.packets(self.layout.bridge, T_CLASSIFY)
        except OpenFlowError as exc:
            raise DataPlaneError("drops", f"cannot read flow statistics: {exc}") from exc
        out: dict[str, int] = {}
        for (prio, match), n in counts.items():
            if prio == P_TUNNEL_DROP and match == f"in_port={TUNNEL_OFPORT}":
                out["vxlan"] = n
            elif (prio, match) == (P_DEFAULT, "") or prio == P_ICMP6_GUARD:
                out["spoof"] = out.get("spoof", 0) + n
        return out

    def apply(self, ops: Sequence[OvsOp], progress: Callable[[OvsOp], None] | None = None) -> None:
        """Apply ``ops`` in order (``backend.apply_all``). Raises ``DataPlaneError``."""
        for op in ops:  # a pair born in a namespace changes what the kernel driver remembers
            if isinstance(op, EnsurePortVeth) and op.netns is not None:
                self._kernel.forget_endpoint(op.netns)
        apply_all(ops, self._apply_one, progress=progress)

    def _apply_one(self, op: OvsOp) -> None:
        try:
            self._dispatch(op)
        except (OvsdbError, OpenFlowError) as exc:
            raise OpFailed(str(exc)) from exc
        except DataPlaneError as exc:  # from the kernel backend, one op at a time
            raise OpFailed(exc.reason) from exc
        except NetlinkError as exc:
            raise OpFailed(f"netlink: {exc}") from exc
        except OSError as exc:
            raise OpFailed(str(exc)) from exc

    def _dispatch(self, op: OvsOp) -> None:
        match op:
            case EnsureOvsBridge():
                self.ovsdb.ensure_bridge(op)
            case DelOvsBridge():
                self.ovsdb.del_bridge(op.name)
            case EnsureOvsPort():
                self.ovsdb.ensure_port(op)
            case AwaitOvsPort():
                self.ovsdb.await_port(op)
            case DelOvsPort():
                self.ovsdb.del_port(op.bridge, op.name)
            case ReplaceFlows():
                self.openflow.replace(op.bridge, op.flows)
            case ModFlows():
                self.openflow.modify(op.bridge, op.add, op.delete)
            case ArmFlowRestoreWait():
                self.ovsdb.set_flow_restore_wait(True)
            case BeginFlowRestore():
                self.ovsdb.set_restore_marker(op.bridge, pending=True)
            case EndFlowRestore():
                self.ovsdb.set_flow_restore_wait(False, wait=True)
                if op.rearm:
                    self.ovsdb.set_flow_restore_wait(True)
                self.ovsdb.set_restore_marker(op.bridge, pending=False)
            case EnsurePortVeth():
                self._host.ensure_port_veth(op)
            case DisableTxChecksum():
                set_tx_checksum(op.netns, op.ifname, on=False)
            case ResolveVteps():
                mac = self._host.mac_of(op.phy)
                if mac is None:
                    raise OpFailed(f"{op.phy} has no device")
                self._neighbours.resolve(op, mac)
            case EnsureUnderlay():
                self._host.ensure_underlay(op)
            case ConfigureEndpoint() | DelLink():
                self._kernel.apply([op])

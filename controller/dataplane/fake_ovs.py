"""``FakeOvs``: an in-memory ovs data plane (OVSDB + ovs-vswitchd + host links) for unit tests.
No I/O.

It keeps state the way the real thing does and applies the same ops with the same semantics as
``OvsDataPlane``: owned-only writes, ovs-vswitchd assigning OpenFlow ports (the requested one if
free and the device exists, else -1 with an error), flow tables keyed by (table, priority,
match) that a restarted ovs-vswitchd loses, ``flow-restore-wait`` read only at start-up and until
first seen false, dependent ops skipped after a failure (shared ``apply_all``). The host links
and endpoint sides are a ``FakeKernel`` (the kernel backend's own fake, through its public ops):
a veth without a Linux bridge master is modelled with a bridge named ``ovs-system``, which is what
the kernel reports as the master of a port of the ``system`` datapath (and, not starting with
``hd``, is never observed as heddle's).

Test hooks: ``restart_vswitchd`` / ``kill_vswitchd`` / ``start_vswitchd``, ``add_foreign_bridge`` /
``add_foreign_port`` / ``add_foreign_flow``, ``del_flow`` / ``del_port`` (drift),
``enable_tx_checksum``, ``fail_next(op_type)``, ``kernel`` (the ``FakeKernel``, with its own hooks),
``waiting`` (ovs-vswitchd holds back forwarding for flow-restore-wait), ``applied``,
``tunnel_neighbours`` (ovs-vswitchd's cache; every member VTEP answers ARP but those in
``silent_vteps``, which are reported as unanswered from then on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from controller.dataplane.backend import DataPlaneError, OpFailed, apply_all
from controller.dataplane.fake_kernel import FakeKernel
from controller.diag.facts import NetworkFacts
from controller.diag.ovs_facts import ovs_facts
from controller.model.flow import COOKIE, Flow
from controller.model.ovs_state import (
    BridgeState,
    OvsdbState,
    OvsState,
    PortState,
    UnderlayState,
)
from controller.model.records import Endpoint, Host, Network
from controller.model.view import HostView, NetworkView
from controller.plan.kernel import endpoint_keys
from controller.plan.kernel_ops import ConfigureEndpoint, DelLink, EnsureBridge, EnsureVeth
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
from controller.plan.ovsdb import OvsLayout

LOCAL_OFPORT = 65534
SYSTEM_MASTER = "ovs-system"

FlowKey = tuple[int, int, tuple[tuple[str, str], ...]]


@dataclass(slots=True)
class _Port:
    name: str
    owned: bool
    type: str = ""
    options: tuple[tuple[str, str], ...] = ()
    ofport_request: int | None = None
    ofport: int | None = None
    error: str | None = None
    network: str | None = None
    endpoint: str | None = None


@dataclass(slots=True)
class _Bridge:
    name: str
    owned: bool
    datapath_type: str = ""
    hwaddr: str | None = None
    restore_pending: bool = False
    ports: dict[str, _Port] = field(default_factory=dict)
    flows: dict[FlowKey, Flow] = field(default_factory=dict)


class FakeOvs:
    """Stateful fake of ``OvsDataPlane`` for ``layout`` (same observe/plan/apply contracts).

    ``nic_address``: the VTEP address with prefix initially on the underlay NIC (``netdev``).
    ``on_change``: called when the fake ovs-vswitchd stops or starts, like the real watch."""

    def __init__(
        self,
        layout: OvsLayout,
        vtep: str = "",
        netns: Iterable[str] = (),
        nic_address: str | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.layout = layout
        self.vtep = vtep
        self.kernel = FakeKernel(vtep, netns, filters=False)
        self.kernel.apply([EnsureBridge(SYSTEM_MASTER, 1500)])
        self.kernel.applied.clear()
        self._bridges: dict[str, _Bridge] = {}
        self.flow_restore_wait = False
        self.running = True
        self.waiting = False
        self._released = True  # ovs-vswitchd has seen flow-restore-wait false since start-up
        self._tx_on: set[tuple[str, str]] = set()
        self._nic = layout.underlay_dev
        self.nic_present = layout.underlay_dev is not None
        self.nic_up = True
        self.nic_noarp = False
        self.nic_addresses: set[str] = {nic_address} if nic_address else set()
        self.phy_up = False
        self.phy_addresses: set[str] = set()
        self.tunnel_neighbours: set[str] = set()
        self.silent_vteps: set[str] = set()  # member VTEPs that never answer ARP
        self._unanswered: set[str] = set()
        self._fail: list[tuple[type, str]] = []
        self._on_change = on_change
        self.applied: list[OvsOp] = []
        self.closed = False

    # -- test hooks -------------------------------------------------------------------------

    def kill_vswitchd(self) -> None:
        """ovs-vswitchd dies: its flow tables and tunnel-neighbour cache are gone, OVSDB and
        the tap devices stay."""
        self.running = False
        self.tunnel_neighbours.clear()
        for br in self._bridges.values():
            br.flows.clear()
        if self._on_change is not None:
            self._on_change()

    def start_vswitchd(self) -> None:
        """A new ovs-vswitchd: empty tables, ports re-opened, waiting if flow-restore-wait."""
        self.running = True
        self.waiting = self.flow_restore_wait
        self._released = not self.flow_restore_wait
        for br in self._bridges.values():
            br.flows.clear()
            for port in br.ports.values():
                self._assign(br, port)
        if self._on_change is not None:
            self._on_change()

    def restart_vswitchd(self) -> None:
        self.kill_vswitchd()
        self.start_vswitchd()

    def add_foreign_bridge(self, name: str) -> None:
        self._bridges[name] = _Bridge(name, owned=False, datapath_type="netdev")

    def add_foreign_port(self, bridge: str, name: str, ofport: int) -> None:
        self._bridges[bridge].ports[name] = _Port(
            name, owned=False, type="internal", ofport_request=ofport, ofport=ofport
        )

    def add_foreign_flow(self, bridge: str, flow: Flow) -> None:
        self._bridges[bridge].flows[flow.key] = flow

    def del_flow(self, bridge: str, flow: Flow) -> None:
        self._bridges[bridge].flows.pop(flow.key, None)

    def del_port(self, bridge: str, name: str) -> None:
        self._bridges[bridge].ports.pop(name, None)

    def enable_tx_checksum(self, netns: str, ifname: str) -> None:
        self._tx_on.add((netns, ifname))

    def fail_next(self, op_type: type, reason: str = "injected failure") -> None:
        """The next op of ``op_type`` fails with ``reason`` (without changing any state)."""
        self._fail.append((op_type, reason))

    def flows(self, bridge: str) -> frozenset[Flow]:
        """Every flow on ``bridge`` (any cookie)."""
        return frozenset(self._bridges[bridge].flows.values())

    # -- DataPlane --------------------------------------------------------------------------

    def observe(self, view: HostView) -> OvsState:
        """Same contract as ``OvsDataPlane.observe``; raises ``DataPlaneError`` while the fake
        ovs-vswitchd is down and one of our bridges exists (its table cannot be read)."""
        db = self._ovsdb_state()
        flows: dict[str, frozenset[Flow]] = {}
        for name in self.layout.bridges:
            br = self._bridges.get(name)
            if br is None or not br.owned:
                continue
            if not self.running:
                raise DataPlaneError("observe", f"cannot read Open vSwitch: {name}: no vswitchd")
            flows[name] = frozenset(f for f in br.flows.values() if f.cookie == COOKIE)
        kernel = self.kernel.observe(view)
        if not self.layout.netdev:
            return OvsState(ovsdb=db, flows=flows, kernel=kernel)
        tx = {
            key: (key in self._tx_on) if kernel.endpoints[key].present else None
            for key in endpoint_keys(view)
        }
        phy = self._bridges.get(self.layout.phy_bridge)
        underlay = UnderlayState(
            nic_present=self.nic_present,
            nic_up=self.nic_present and self.nic_up,
            nic_noarp=self.nic_present and self.nic_noarp,
            nic_addresses=frozenset(self.nic_addresses) if self.nic_present else frozenset(),
            phy_present=phy is not None,
            phy_up=phy is not None and self.phy_up,
            phy_addresses=frozenset(self.phy_addresses) if phy is not None else frozenset(),
            tunnel_neighbours=frozenset(self.tunnel_neighbours),
            unanswered=frozenset(self._unanswered),
        )
        return OvsState(ovsdb=db, flows=flows, kernel=kernel, tx_checksum=tx, underlay=underlay)

    def _ovsdb_state(self) -> OvsdbState:
        names = set(self.layout.bridges)
        bridges = {
            name: self._bridge_state(br)
            for name, br in self._bridges.items()
            if name in names or br.owned
        }
        return OvsdbState(bridges=bridges, flow_restore_wait=self.flow_restore_wait)

    def unchanged(self, state: OvsState) -> bool:
        """As ``OvsDataPlane.unchanged``: OVSDB still holds ``state.ovsdb`` (and the fake
        ovs-vswitchd runs: the real driver's watch tells the reconciler of a restart)."""
        return self.running and self._ovsdb_state() == state.ovsdb

    def plan(self, view: HostView, actual: OvsState) -> tuple[OvsOp, ...]:
        return plan_ovs(self.layout, view, actual)

    def inventory(self, view: HostView, actual: OvsState) -> Mapping[str, int]:
        """Pure; see ``controller.plan.ovs.owned_counts``."""
        return owned_counts(self.layout, view, actual)

    def facts(self, view: HostView, network: str, actual: OvsState) -> NetworkFacts | None:
        """Pure; see ``controller.diag.ovs_facts``."""
        nv = view.network(network)
        return None if nv is None else ovs_facts(self.layout, view.host, nv, actual)

    def drops(self) -> Mapping[str, int]:
        """As ``OvsDataPlane.drops``."""
        return {}

    def apply(self, ops: Sequence[OvsOp], progress: Callable[[OvsOp], None] | None = None) -> None:
        apply_all(ops, self._apply_one, progress=progress)

    observed_in_full = True  # every observe reads (DataPlane.observed_in_full)
    settled = True  # nothing remembered, nothing to settle (DataPlane.settled)

    def forget(self) -> None:
        """Nothing to forget: every observe reads afresh (``DataPlane.forget``)."""

    def close(self) -> None:
        self.closed = True

    # -- state ------------------------------------------------------------------------------

    @staticmethod
    def _bridge_state(br: _Bridge) -> BridgeState:
        used = {LOCAL_OFPORT}
        for p in br.ports.values():
            used |= {n for n in (p.ofport, p.ofport_request) if n is not None and n > 0}
        return BridgeState(
            name=br.name,
            owned=br.owned,
            datapath_type=br.datapath_type,
            fail_mode="secure" if br.owned else None,
            hwaddr=br.hwaddr,
            restore_pending=br.restore_pending,
            ports={
                p.name: PortState(
                    name=p.name,
                    owned=p.owned,
                    type=p.type,
                    options=p.options,
                    ofport_request=p.ofport_request,
                    ofport=p.ofport,
                    error=p.error,
                    network=p.network,
                    endpoint=p.endpoint,
                )
                for p in br.ports.values()
            },
            used_ofports=frozenset(used),
        )

    def _device_exists(self, name: str) -> bool:
        if name == self._nic:
            return self.nic_present
        return name in self.kernel.observe(_EMPTY).links

    def _assign(self, br: _Bridge, port: _Port) -> None:
        """What ovs-vswitchd does on reconfiguration: open the device, give it its number."""
        if port.type == "" and not self._device_exists(port.name):
            port.ofport, port.error = -1, f"could not open network device {port.name}"
            return
        taken = {p.ofport for p in br.ports.values() if p is not port and p.ofport and p.ofport > 0}
        want = port.ofport_request
        if want is not None and want not in taken:
            port.ofport, port.error = want, None
            return
        n = 1
        while n in taken:
            n += 1
        port.ofport, port.error = n, None

    # -- op semantics -----------------------------------------------------------------------

    def _apply_one(self, op: OvsOp) -> None:
        for i, (op_type, reason) in enumerate(self._fail):
            if isinstance(op, op_type):
                del self._fail[i]
                raise OpFailed(reason)
        match op:
            case EnsureOvsBridge():
                self._ensure_bridge(op)
            case DelOvsBridge():
                br = self._bridges.get(op.name)
                if br is not None:
                    if not br.owned:
                        raise OpFailed(f"bridge {op.name} is not owned by heddle")
                    self._need_vswitchd()
                    del self._bridges[op.name]
            case EnsureOvsPort():
                self._ensure_port(op)
            case AwaitOvsPort():
                self._need_vswitchd()
                self._check_port(op.bridge, op.name, op.ofport)
            case DelOvsPort():
                self._del_port(op)
            case ReplaceFlows():
                br = self._flow_bridge(op.bridge)
                br.flows = {f.key: f for f in op.flows}
            case ModFlows():
                br = self._flow_bridge(op.bridge)
                for f in op.delete:
                    if br.flows.get(f.key, f).cookie == f.cookie:
                        br.flows.pop(f.key, None)
                for f in op.add:
                    br.flows[f.key] = f
            case ArmFlowRestoreWait():
                self.flow_restore_wait = True
            case BeginFlowRestore():
                self._owned_bridge(op.bridge).restore_pending = True
            case EndFlowRestore():
                self._need_vswitchd()
                self.flow_restore_wait = False
                self._released, self.waiting = True, False
                if op.rearm:
                    self.flow_restore_wait = True
                self._owned_bridge(op.bridge).restore_pending = False
            case EnsurePortVeth():
                self._ensure_veth(op)
            case DisableTxChecksum():
                if (
                    not self.kernel.observe(_view_of(op.netns, op.ifname))
                    .endpoints[op.netns, op.ifname]
                    .present
                ):
                    raise OpFailed(f"no interface {op.netns}/{op.ifname}")
                self._tx_on.discard((op.netns, op.ifname))
            case EnsureUnderlay():
                self._ensure_underlay(op)
            case ResolveVteps():
                if op.phy not in self._bridges:
                    raise OpFailed(f"{op.phy} has no device")
                self._need_vswitchd()
                # while it holds back forwarding (flow-restore-wait), no ARP gets out
                silent = set(op.peers) if self.waiting else self.silent_vteps
                self.tunnel_neighbours |= set(op.peers) - silent
                self._unanswered |= set(op.peers) & silent
            case ConfigureEndpoint() | DelLink():
                try:
                    self.kernel.apply([op])
                except DataPlaneError as exc:
                    raise OpFailed(exc.reason) from exc
        self.applied.append(op)

    def _need_vswitchd(self) -> None:
        if not self.running:
            raise OpFailed("ovs-vswitchd did not apply the change in time; is it running?")

    def _owned_bridge(self, name: str) -> _Bridge:
        br = self._bridges.get(name)
        if br is None or not br.owned:
            raise OpFailed(f"bridge {name} is missing or not owned by heddle")
        return br

    def _flow_bridge(self, name: str) -> _Bridge:
        br = self._owned_bridge(name)
        if not self.running:
            raise OpFailed(f"{name}: cannot connect to ovs-vswitchd")
        return br

    def _ensure_bridge(self, op: EnsureOvsBridge) -> None:
        br = self._bridges.get(op.name)
        if br is not None and not br.owned:
            raise OpFailed(f"bridge {op.name} exists and is not owned by heddle")
        if br is None:
            br = _Bridge(op.name, owned=True)
            self._bridges[op.name] = br
        if br.datapath_type != op.datapath_type:
            br.flows.clear()  # a new datapath means a new ofproto: an empty table
        br.datapath_type, br.hwaddr = op.datapath_type, op.hwaddr
        self._need_vswitchd()

    def _ensure_port(self, op: EnsureOvsPort) -> None:
        br = self._owned_bridge(op.bridge)
        for other in self._bridges.values():
            port = other.ports.get(op.name)
            if port is None:
                continue
            if not port.owned:
                raise OpFailed(f"port {op.name} exists and is not owned by heddle")
            if other is not br:
                del other.ports[op.name]
        port = br.ports.get(op.name) or _Port(op.name, owned=True)
        br.ports[op.name] = port
        port.type, port.options, port.ofport_request = op.type, op.options, op.ofport
        port.network, port.endpoint = op.network, op.endpoint
        self._need_vswitchd()
        self._assign(br, port)
        if op.wait:
            self._check_port(op.bridge, op.name, op.ofport)

    def _check_port(self, bridge: str, name: str, want: int) -> None:
        port = self._owned_bridge(bridge).ports.get(name)
        if port is None:
            raise OpFailed(f"port {name} vanished right after it was written")
        if port.ofport == -1:
            raise OpFailed(f"interface {name} has ofport -1: {port.error}")
        if port.ofport != want:
            raise OpFailed(f"interface {name} got ofport {port.ofport}, not {want}")

    def _del_port(self, op: DelOvsPort) -> None:
        for br in self._bridges.values():
            port = br.ports.get(op.name)
            if port is None:
                continue
            if not port.owned:
                raise OpFailed(f"port {op.name} is not owned by heddle")
            self._need_vswitchd()
            del br.ports[op.name]

    def _ensure_veth(self, op: EnsurePortVeth) -> None:
        veth = EnsureVeth(
            op.host_name, op.peer_name, SYSTEM_MASTER, op.mtu, op.peer_mac, op.netns, op.ifname
        )
        try:
            self.kernel.apply([veth])
        except DataPlaneError as exc:
            raise OpFailed(exc.reason) from exc
        if self.layout.netdev:  # the userspace datapath reads the port through AF_PACKET
            self.kernel.set_master(op.host_name, None)

    def _ensure_underlay(self, op: EnsureUnderlay) -> None:
        if not self.nic_present:
            raise OpFailed(f"underlay device {op.nic} does not exist")
        if op.phy not in self._bridges:
            raise OpFailed(f"{op.phy} has no device yet")
        if op.prefixlen is None:
            raise OpFailed(f"VTEP {op.vtep} is on neither {op.nic} nor {op.phy}")
        self.nic_up = self.nic_noarp = self.phy_up = True
        self.phy_addresses.add(f"{op.vtep}/{op.prefixlen}")
        self.nic_addresses = {a for a in self.nic_addresses if a.split("/")[0] != op.vtep}


_FAKE_HOST = Host("fake", "192.0.2.254")
_EMPTY = HostView(_FAKE_HOST, ())


def _view_of(netns: str, ifname: str) -> HostView:
    """A view that makes ``FakeKernel.observe`` report exactly one endpoint side."""
    net = Network("fake", 1, "10.0.0.0/24")
    ep = Endpoint("fake", "fake", "fake", "10.0.0.2", "02:00:00:00:00:02", netns, ifname)
    return HostView(_FAKE_HOST, (NetworkView(net, 1450, (ep,), (), ()),))

"""``FakeKernel``: an in-memory kernel data plane for tests of the reconciler. No I/O.

It keeps state the way the kernel does (links, veth peers that move between namespaces, VXLAN
FDB and neighbour tables, endpoint namespaces) and applies the same ops with the same
semantics as ``KernelDataPlane``: idempotent, owned-only, dependent ops skipped after a failure
(shared ``apply_all``), deleting a VXLAN device flushes its entries, deleting one end of a veth
removes the other. The contract test in ``tests/integration/test_kernel_dataplane.py`` checks
that both drivers end in equal observed states.

Test hooks: ``add_netns`` / ``remove_netns``, ``add_foreign_link`` / ``add_foreign_iface``
(objects heddle must never touch), ``fail_next(op_type)`` (failure injection), ``drop_fdb``
(simulate someone deleting an entry by hand), ``drop_port_fdb`` and ``set_learning`` (the
bridge's own FDB and port flags), ``set_mtu``, ``move_peer`` (Docker taking a
peer), ``drop_filters``, ``guard_chains`` and ``bridge_table`` (heddle's nftables tables:
the fake refuses a port's guard without its device, as Linux 6.1 does, and keeps it when the
device goes, as later kernels do), and ``applied`` (every op applied, in order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self

from controller.dataplane.backend import OpFailed, apply_all
from controller.diag.facts import NetworkFacts
from controller.diag.kernel_facts import kernel_facts
from controller.model.kernel_state import (
    EndpointSide,
    FdbEntry,
    KernelState,
    LinkState,
    NeighEntry,
    PortFdbEntry,
    VxlanAttrs,
)
from controller.model.naming import PREFIX
from controller.model.nft_filter import FilterSpec
from controller.model.nft_guards import PortGuard
from controller.model.view import HostView
from controller.plan.kernel import endpoint_keys, owned_counts, plan_kernel
from controller.plan.kernel_ops import (
    AddFlood,
    ConfigureEndpoint,
    DelFdb,
    DelLink,
    DelNeigh,
    DelPortFdb,
    DropBridgeGuards,
    EnableForwarding,
    EnsureBridge,
    EnsureVeth,
    EnsureVxlan,
    GuardPort,
    KernelOp,
    PutFdb,
    PutNeigh,
    PutPortFdb,
    SyncFilters,
    UnguardPort,
)


@dataclass(slots=True)
class _Link:
    name: str
    kind: str
    owned: bool
    index: int
    mac: str
    mtu: int = 1500
    up: bool = False
    master: str | None = None
    mcast_snooping: bool | None = None
    vxlan: VxlanAttrs | None = None
    partner: str | None = None  # veth: the other end's key (see _Peer)
    learning: bool | None = None  # bridge ports only
    addresses: tuple[str, ...] = ()  # IPv4 "ip/prefixlen", bridges only (egress gateways)


@dataclass(slots=True)
class _Iface:
    """An interface inside an endpoint netns (our veth peer, or a foreign one)."""

    name: str
    owned: bool
    partner: str | None
    mac: str = ""
    mtu: int = 1500
    up: bool = False
    addresses: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Netns:
    ifaces: dict[str, _Iface] = field(default_factory=dict)
    gateway: tuple[str, str] | None = None  # (gateway, dev)
    gateway6: tuple[str, str] | None = None  # (gateway, dev)


class FakeKernel:
    """Stateful fake of ``KernelDataPlane`` (same ``observe``/``plan``/``apply`` contracts).

    ``vtep`` is accepted for signature parity; the planner takes the VTEP from the view.
    """

    def __init__(self, vtep: str = "", netns: Iterable[str] = (), filters: bool = True) -> None:
        self.vtep = vtep
        self.filters = filters
        self.filter_spec: FilterSpec | None = None  # table inet heddle (None: absent)
        self.guard_chains: dict[str, tuple[PortGuard, ...]] = {}  # table netdev heddle, by port
        self.bridge_table = False  # an earlier release's table bridge heddle (tests set it)
        self.dropped: dict[str, int] = {}
        self._links: dict[str, _Link] = {}
        self._fdb: dict[str, list[FdbEntry]] = {}
        self._neigh: dict[str, dict[str, NeighEntry]] = {}
        self._ports: dict[str, dict[str, str]] = {}  # bridge -> static entries, MAC -> port
        self._netns: dict[str, _Netns] = {name: _Netns() for name in netns}
        self._next_index = 2
        self._fail: list[tuple[type, str]] = []
        self.applied: list[KernelOp] = []
        self.closed = False
        self.observations = 0  # how often observe ran (tests of Incremental count reads)
        self.forwarding = False  # net.ipv4.ip_forward of the host namespace

    # -- test hooks -------------------------------------------------------------------------

    def add_netns(self, name: str) -> None:
        self._netns.setdefault(name, _Netns())

    def remove_netns(self, name: str) -> None:
        """Like deleting a namespace: its veth ends die, and with them their host-side partners."""
        ns = self._netns.pop(name, None)
        if ns is None:
            return
        for iface in ns.ifaces.values():
            if iface.partner is not None:
                gone = self._links.pop(iface.partner, None)
                if gone is not None:
                    self._release(gone)

    def set_master(self, name: str, master: str | None) -> None:
        """Like another program enslaving or releasing link ``name`` (the OVS datapaths do:
        ``system`` puts a port under ``ovs-system``, ``netdev`` leaves it without a master)."""
        lk = self._links.get(name)
        if lk is not None:
            self._release(lk)
            lk.master = master
            into = self._links.get(master) if master is not None else None
            lk.learning = True if into is not None and into.kind == "bridge" else None

    def set_learning(self, name: str, learning: bool) -> None:
        """Turn a bridge port's learning on or off behind heddle's back (drift)."""
        self._links[name].learning = learning

    def drop_port_fdb(self, bridge: str, mac: str) -> None:
        """Remove a static bridge FDB entry behind heddle's back (drift)."""
        del self._ports[bridge][mac]

    def add_foreign_link(self, name: str, kind: str = "bridge") -> None:
        """A host-namespace link heddle did not create (no owner marker)."""
        self._links[name] = _Link(name, kind, owned=False, index=self._index(), mac=self._mac())

    def add_foreign_iface(self, netns: str, ifname: str) -> None:
        self.add_netns(netns)
        self._netns[netns].ifaces[ifname] = _Iface(ifname, owned=False, partner=None)

    def fail_next(self, op_type: type, reason: str = "injected failure") -> None:
        """The next op of ``op_type`` fails with ``reason`` (without changing any state)."""
        self._fail.append((op_type, reason))

    def move_peer(self, peer_name: str, netns: str) -> None:
        """Move a veth end from the host namespace into ``netns`` (what Docker does with an
        endpoint whose ``netns`` is ``None``)."""
        peer = self._links.pop(peer_name)
        self.add_netns(netns)
        iface = _Iface(peer_name, owned=peer.owned, partner=peer.partner, mac=peer.mac)
        iface.mtu = peer.mtu
        self._netns[netns].ifaces[peer_name] = iface

    def drop_filters(self) -> None:
        """Delete heddle's nftables tables behind its back (drift)."""
        self.filter_spec = None
        self.guard_chains.clear()

    def drop_fdb(self, dev: str, mac: str, dst: str) -> None:
        """Remove an FDB entry behind heddle's back (drift)."""
        self._fdb.get(dev, []).remove(FdbEntry(mac, dst))

    def set_mtu(self, name: str, mtu: int) -> None:
        """Change a link's MTU behind heddle's back (drift)."""
        self._links[name].mtu = mtu

    # -- DataPlane --------------------------------------------------------------------------

    def observe(self, view: HostView) -> KernelState:
        """The current state; only endpoint sides named by ``view`` are reported. Pure read
        (apart from counting ``observations``)."""
        self.observations += 1
        links: dict[str, LinkState] = {}
        for name, lk in self._links.items():
            if name.startswith(PREFIX):
                links[name] = LinkState(
                    name=name,
                    kind=lk.kind,
                    owned=lk.owned,
                    index=lk.index,
                    mtu=lk.mtu,
                    mac=lk.mac,
                    up=lk.up,
                    master=lk.master,
                    mcast_snooping=lk.mcast_snooping,
                    vxlan=lk.vxlan,
                    learning=lk.learning,
                )
        bridges = [n for n, lk in links.items() if lk.owned and lk.kind == "bridge"]
        port_fdb = {
            br: frozenset(PortFdbEntry(m, p) for m, p in self._ports.get(br, {}).items())
            for br in bridges
        }
        owned_vx = [n for n, lk in self._links.items() if lk.owned and lk.kind == "vxlan"]
        fdb = {n: frozenset(self._fdb.get(n, ())) for n in owned_vx}
        neigh = {n: frozenset(self._neigh.get(n, {}).values()) for n in owned_vx}
        sides: dict[tuple[str, str], EndpointSide] = {}
        for netns, ifname in endpoint_keys(view):
            ns = self._netns.get(netns)
            if ns is None:
                sides[netns, ifname] = EndpointSide(netns, ifname, netns_exists=False)
                continue
            iface = ns.ifaces.get(ifname)
            if iface is None:
                sides[netns, ifname] = EndpointSide(netns, ifname)
                continue
            sides[netns, ifname] = EndpointSide(
                netns=netns,
                ifname=ifname,
                present=True,
                owned=iface.owned,
                mac=iface.mac,
                mtu=iface.mtu,
                up=iface.up,
                addresses=frozenset(iface.addresses),
                gateway=ns.gateway[0] if ns.gateway else None,
                gateway6=ns.gateway6[0] if ns.gateway6 else None,
            )
        spec = self.filter_spec if self.filters else None
        egress = any(nv.network.egress is not None for nv in view.networks)
        addresses = {
            n: tuple(sorted(lk.addresses))
            for n, lk in self._links.items()
            if lk.owned and lk.kind == "bridge" and lk.addresses
        }
        return KernelState(
            links=links,
            fdb=fdb,
            neigh=neigh,
            port_fdb=port_fdb,
            endpoints=sides,
            filters=spec,
            guards=dict(self.guard_chains) if self.filters else {},
            bridge_guards=self.bridge_table and self.filters,
            bridge_addresses=addresses,
            forwarding=self.forwarding if egress else None,
        )

    def plan(self, view: HostView, actual: KernelState) -> tuple[KernelOp, ...]:
        return plan_kernel(view, actual, filters=self.filters)

    def inventory(self, view: HostView, actual: KernelState) -> Mapping[str, int]:
        """Pure; see ``controller.plan.kernel.owned_counts``."""
        return owned_counts(view)

    def facts(self, view: HostView, network: str, actual: KernelState) -> NetworkFacts | None:
        """Pure; see ``controller.diag.kernel_facts``."""
        nv = view.network(network)
        return None if nv is None else kernel_facts(view.host, nv, actual)

    def drops(self) -> Mapping[str, int]:
        """Counted by the fake: ``dropped`` (set by tests); the fake forwards nothing."""
        return dict(self.dropped)

    def apply(
        self, ops: Sequence[KernelOp], progress: Callable[[KernelOp], None] | None = None
    ) -> None:
        apply_all(ops, self._apply_one, progress=progress)

    observed_in_full = True  # every observe reads (DataPlane.observed_in_full)
    settled = True  # nothing remembered, nothing to settle (DataPlane.settled)

    def forget(self) -> None:
        """Nothing to forget: every observe reads afresh (``DataPlane.forget``)."""

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- op semantics -----------------------------------------------------------------------

    def _apply_one(self, op: KernelOp) -> None:
        for i, (op_type, reason) in enumerate(self._fail):
            if isinstance(op, op_type):
                del self._fail[i]
                raise OpFailed(reason)
        match op:
            case SyncFilters():
                self.filter_spec = op.spec
            case GuardPort():
                if op.port not in self._links:  # as Linux 6.1: a hook needs its device
                    raise OpFailed(f"nftables: no device {op.port}")
                self.guard_chains[op.port] = op.guards
            case UnguardPort():  # kept when its device went, as recent kernels do (6.18 here)
                self.guard_chains.pop(op.port, None)
            case DropBridgeGuards():
                self.bridge_table = False
            case EnableForwarding():
                self.forwarding = True
            case EnsureBridge():
                self._ensure_bridge(op)
            case EnsureVxlan():
                self._ensure_vxlan(op)
            case EnsureVeth():
                self._ensure_veth(op)
            case ConfigureEndpoint():
                self._configure_endpoint(op)
            case DelLink():
                self._del_link(op.name)
            case PutFdb():
                entries = self._vx_fdb(op.dev)
                for i, e in enumerate(entries):
                    if e.mac == op.mac:
                        entries[i] = FdbEntry(op.mac, op.dst)  # replace rewrites the first remote
                        break
                else:
                    entries.append(FdbEntry(op.mac, op.dst))
            case AddFlood():
                entries = self._vx_fdb(op.dev)
                if FdbEntry("00:00:00:00:00:00", op.dst) not in entries:
                    entries.append(FdbEntry("00:00:00:00:00:00", op.dst))
            case DelFdb():
                if self._mine(op.dev, "vxlan") is not None:  # gone with its device: success
                    entries = self._fdb.setdefault(op.dev, [])
                    if FdbEntry(op.mac, op.dst) in entries:
                        entries.remove(FdbEntry(op.mac, op.dst))
            case PutNeigh():
                self._vx(op.dev)
                self._neigh.setdefault(op.dev, {})[op.ip] = NeighEntry(op.ip, op.mac, True)
            case DelNeigh():
                if self._mine(op.dev, "vxlan") is not None:
                    self._neigh.setdefault(op.dev, {}).pop(op.ip, None)
            case PutPortFdb():
                port = self._port(op.dev)
                if port is None:
                    raise OpFailed(f"no bridge port {op.dev} owned by heddle")
                assert port.master is not None
                # one entry per MAC in a bridge: replace moves it (a port leaving a bridge
                # already took its entries along, see _release)
                self._ports.setdefault(port.master, {})[op.mac] = op.dev
            case DelPortFdb():
                port = self._port(op.dev)
                table = self._ports.get(port.master or "", {}) if port is not None else {}
                if table.get(op.mac) == op.dev:
                    del table[op.mac]
        self.applied.append(op)

    def _index(self) -> int:
        self._next_index += 1
        return self._next_index

    def _mac(self) -> str:
        n = self._next_index
        return f"fe:00:00:00:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"

    def _mine(self, name: str, kind: str) -> _Link | None:
        lk = self._links.get(name)
        if lk is None:
            return None
        if not lk.owned:
            raise OpFailed(f"link {name} exists and is not owned by heddle; refusing to adopt it")
        if lk.kind != kind:
            raise OpFailed(f"link {name} is a {lk.kind}, not a {kind}")
        return lk

    def _vx(self, dev: str) -> _Link:
        lk = self._mine(dev, "vxlan")
        if lk is None:
            raise OpFailed(f"no vxlan device {dev}")
        return lk

    def _vx_fdb(self, dev: str) -> list[FdbEntry]:
        self._vx(dev)
        return self._fdb.setdefault(dev, [])

    def _port(self, name: str) -> _Link | None:
        """Owned link ``name`` enslaved to a bridge (``None``: absent or not a bridge port)."""
        lk = self._links.get(name)
        if lk is None or not lk.owned:
            return None
        master = self._links.get(lk.master) if lk.master is not None else None
        return lk if master is not None and master.kind == "bridge" else None

    def _release(self, lk: _Link) -> None:
        """What leaving its bridge does to a port: the bridge forgets its entries."""
        table = self._ports.get(lk.master or "", {})
        for mac in [m for m, p in table.items() if p == lk.name]:
            del table[mac]

    def _bridge(self, name: str) -> _Link:
        lk = self._mine(name, "bridge")
        if lk is None:
            raise OpFailed(f"no bridge {name}")
        return lk

    def _ensure_bridge(self, op: EnsureBridge) -> None:
        lk = self._mine(op.name, "bridge")
        if lk is None:
            lk = _Link(op.name, "bridge", owned=True, index=self._index(), mac=self._mac())
            self._links[op.name] = lk
        lk.mtu, lk.up, lk.mcast_snooping = op.mtu, True, False
        if op.mac is not None:
            lk.mac = op.mac
        lk.addresses = tuple(sorted(set(op.addresses)))

    def _ensure_vxlan(self, op: EnsureVxlan) -> None:
        self._bridge(op.bridge)
        want = VxlanAttrs(vni=op.vni, local=op.vtep, port=op.port, learning=False, proxy=True)
        lk = self._mine(op.name, "vxlan")
        if lk is None:
            if any(x.vxlan is not None and x.vxlan.vni == op.vni for x in self._links.values()):
                raise OpFailed(f"VNI {op.vni} is already used by another vxlan device")
            lk = _Link(op.name, "vxlan", owned=True, index=self._index(), mac=self._mac())
            lk.vxlan = want
            self._links[op.name] = lk
        elif lk.vxlan != want:
            raise OpFailed(f"vxlan {op.name} has {lk.vxlan}, want {want}: delete it first")
        self._enslave(lk, op.bridge)
        lk.mtu, lk.up = op.mtu, True

    def _enslave(self, lk: _Link, bridge: str) -> None:
        if lk.master != bridge:
            self._release(lk)
        lk.master, lk.learning = bridge, False

    def _ensure_veth(self, op: EnsureVeth) -> None:
        self._bridge(op.bridge)
        lk = self._mine(op.host_name, "veth")
        if lk is None and op.netns is not None:
            ns = self._netns.get(op.netns)
            if ns is None:
                raise OpFailed(f"network namespace {op.netns} does not exist")
            if op.ifname in ns.ifaces:
                raise OpFailed(f"{op.netns}/{op.ifname} exists and is not owned by heddle")
            lk = _Link(op.host_name, "veth", owned=True, index=self._index(), mac=self._mac())
            lk.partner = op.peer_name
            iface = _Iface(op.ifname, owned=True, partner=op.host_name, mac=op.peer_mac)
            iface.mtu = op.mtu
            ns.ifaces[op.ifname] = iface
            self._links[op.host_name] = lk
        elif lk is None:
            if op.peer_name in self._links:
                raise OpFailed(f"peer name {op.peer_name} is taken in the host namespace")
            lk = _Link(op.host_name, "veth", owned=True, index=self._index(), mac=self._mac())
            lk.partner = op.peer_name
            peer = _Link(op.peer_name, "veth", owned=True, index=self._index(), mac=op.peer_mac)
            peer.mtu, peer.partner = op.mtu, op.host_name
            self._links[op.host_name] = lk
            self._links[op.peer_name] = peer
        self._enslave(lk, op.bridge)
        lk.mtu, lk.up = op.mtu, True
        peer_here = self._links.get(op.peer_name)
        if peer_here is not None and peer_here.owned and peer_here.partner == op.host_name:
            peer_here.mac, peer_here.mtu = op.peer_mac, op.mtu

    def _configure_endpoint(self, op: ConfigureEndpoint) -> None:
        ns = self._netns.get(op.netns)
        if ns is None:
            raise OpFailed(f"network namespace {op.netns} does not exist")
        iface = ns.ifaces.get(op.ifname)
        if iface is not None and not iface.owned:
            raise OpFailed(f"{op.netns}/{op.ifname} exists and is not owned by heddle")
        if iface is None:
            iface = ns.ifaces.pop(op.peer_name, None)
            if iface is None:
                peer = self._links.get(op.peer_name)
                if peer is None or not peer.owned or peer.kind != "veth":
                    raise OpFailed(f"veth peer {op.peer_name} not found in host ns or {op.netns}")
                del self._links[op.peer_name]
                iface = _Iface(op.peer_name, owned=True, partner=peer.partner, mtu=peer.mtu)
                iface.mac = peer.mac
            iface.name = op.ifname
            ns.ifaces[op.ifname] = iface
        iface.mac, iface.mtu, iface.up = op.mac, op.mtu, True
        iface.addresses.update(op.addresses)
        for gw in op.gateways:
            if ":" in gw:
                ns.gateway6 = (gw, op.ifname)
            else:
                ns.gateway = (gw, op.ifname)

    def _del_link(self, name: str) -> None:
        lk = self._links.get(name)
        if lk is None:
            return
        if not lk.owned:
            raise OpFailed(f"link {name} is not owned by heddle; refusing to delete it")
        del self._links[name]
        self._release(lk)
        self._ports.pop(name, None)
        if lk.kind == "vxlan":
            self._fdb.pop(name, None)
            self._neigh.pop(name, None)
        for other in self._links.values():
            if other.master == name:
                other.master, other.learning = None, None
        if lk.partner is None or self._links.pop(lk.partner, None) is not None:
            return
        for ns in self._netns.values():  # the peer has moved into an endpoint netns
            for ifname, iface in list(ns.ifaces.items()):
                if iface.partner == name:
                    del ns.ifaces[ifname]
                    if ns.gateway is not None and ns.gateway[1] == ifname:
                        ns.gateway = None
                    if ns.gateway6 is not None and ns.gateway6[1] == ifname:
                        ns.gateway6 = None

"""Op vocabulary of the kernel (bridge + VXLAN) data plane.

Every op is a small frozen, hashable value. Contracts shared by all ops:

* **Idempotent.** Applying an op twice leaves the kernel as applying it once (create-or-update,
  replace semantics, "already gone" is success for deletes). That is what lets a pass that died
  half-way simply be re-planned and re-applied.
* **Convergent.** ``Ensure*`` ops carry the *complete* desired attributes of their object and
  bring an existing object to them (MTU, master, up, ownership marker), so the planner has one
  op per object instead of one per attribute.
* **Owned only.** Drivers must refuse to modify or delete a link that does not carry the owner
  ifalias, even if an op names it.
* ``str(op)`` is one log line.
* ``needs`` / ``provides`` name the links an op depends on / creates. A driver that keeps going
  after a failed op skips later ops that need what the failed op was to provide (so one broken
  endpoint does not abort the whole pass, and nothing is attempted on a device that is missing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controller.model.kernel_state import ZERO_MAC as ZERO_MAC  # the ops' flood entries
from controller.model.nft_filter import FilterSpec
from controller.model.nft_guards import PortGuard
from controller.plan.independent import Independent

VXLAN_PORT = 4789


@dataclass(frozen=True, slots=True)
class EnsureBridge:
    """A Linux bridge ``name``: MTU ``mtu``, multicast snooping off (G4), up, owned; with
    ``mac`` that MAC, and exactly ``addresses`` (IPv4 ``ip/prefixlen``: an egress network's
    gateway) as its addresses -- any other IPv4 address on it is removed (the bridge is
    heddle's)."""

    name: str
    mtu: int
    mac: str | None = None
    addresses: tuple[str, ...] = ()

    @property
    def needs(self) -> frozenset[str]:
        return frozenset()

    @property
    def provides(self) -> frozenset[str]:
        return frozenset({self.name})

    def __str__(self) -> str:
        extra = f" address {self.mac} ip {','.join(self.addresses)}" if self.mac else ""
        return f"ensure bridge {self.name} mtu {self.mtu} mcast_snooping 0{extra}"


@dataclass(frozen=True, slots=True)
class EnableForwarding(Independent):
    """``net.ipv4.ip_forward = 1`` in the host namespace (an egress network is local). Never
    turned off again by heddle: other things on the host may route too."""

    def __str__(self) -> str:
        return "sysctl net.ipv4.ip_forward=1"


@dataclass(frozen=True, slots=True)
class EnsureVxlan:
    """A VXLAN device: ``vni``, ``local=vtep``, dstport ``port``, nolearning, proxy, enslaved to
    ``bridge`` as a port with learning off, MTU ``mtu``, up, owned.

    VNI, local, port, learning and proxy are fixed at creation; when they differ the planner
    deletes the device first (``DelLink``), so a driver may treat a mismatch as an error.
    """

    name: str
    vni: int
    vtep: str
    mtu: int
    bridge: str
    port: int = VXLAN_PORT

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({self.bridge})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset({self.name})

    def __str__(self) -> str:
        return (
            f"ensure vxlan {self.name} id {self.vni} local {self.vtep} dstport {self.port} "
            f"nolearning proxy master {self.bridge} (port learning off) mtu {self.mtu}"
        )


@dataclass(frozen=True, slots=True)
class EnsureVeth:
    """A veth pair for one endpoint: ``host_name`` in ``bridge`` as a port with learning off
    (MTU, up, owned).

    When created with ``netns``, the peer is born directly inside that namespace as ``ifname``
    with ``peer_mac`` and ``mtu`` (and owned): moving a device between namespaces costs the
    kernel 15-30 ms of RCU synchronisation, creating it in place under 1 ms. Without ``netns``
    (Docker moves the peer itself) the peer is born in the host namespace as ``peer_name``, and
    its MAC and MTU are kept converged while it is still there. Once the peer has left the host
    namespace it is not touched here.
    """

    host_name: str
    peer_name: str
    bridge: str
    mtu: int
    peer_mac: str
    netns: str | None = None
    ifname: str = "eth0"

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({self.bridge})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset({self.host_name, self.peer_name})

    def __str__(self) -> str:
        where = f"{self.netns}/{self.ifname}" if self.netns else self.peer_name
        return (
            f"ensure veth {self.host_name} master {self.bridge} mtu {self.mtu} "
            f"peer {where} address {self.peer_mac}"
        )


@dataclass(frozen=True, slots=True)
class ConfigureEndpoint:
    """The endpoint side inside netns ``netns``: interface ``ifname`` (moved in from the host
    namespace as ``peer_name`` and renamed when needed), MAC, MTU, up, ``addresses``
    (``ip/prefixlen``, IPv4 and/or IPv6; an IPv6 one without duplicate address detection, so it
    is usable at once: the etcd transaction that allocated it already made it unique), and a
    default route via each of ``gateways`` (one per family at most).

    Adds, never removes, addresses and routes inside the endpoint namespace: that namespace is
    the workload's, not ours. Drivers fail (for this endpoint only) when ``netns`` does not exist
    or ``ifname`` there is an interface heddle did not create.
    """

    netns: str
    peer_name: str
    ifname: str
    mac: str
    addresses: tuple[str, ...]
    mtu: int
    gateways: tuple[str, ...] = ()

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({self.peer_name})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset()

    def __str__(self) -> str:
        via = "".join(f" default via {g}" for g in self.gateways)
        return (
            f"configure endpoint {self.netns}/{self.ifname} (from {self.peer_name}) "
            f"address {self.mac} {' '.join(self.addresses)} mtu {self.mtu} up{via}"
        )


@dataclass(frozen=True, slots=True)
class DelLink(Independent):
    """Delete owned link ``name`` (and with it a veth's peer, or a VXLAN device's FDB and
    neighbour entries). Absent is success; a link without the owner marker is never deleted."""

    name: str

    def __str__(self) -> str:
        return f"delete link {self.name}"


class _EntryOp:
    """Shared by the FDB and neighbour ops: each needs its device (the VXLAN device; for the
    bridge FDB ops, the bridge port) and creates no link."""

    __slots__ = ()
    dev: str

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({self.dev})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True, slots=True)
class PutPortFdb(_EntryOp):
    """Static entry ``mac`` in the bridge FDB, on bridge port ``dev`` (a veth or VXLAN device):
    NTF_MASTER, NUD_NOARP, *replace* (a MAC that moved to another port is moved). Every port
    has learning off, so these entries are how the bridge knows where a MAC lives: no frame can
    move one."""

    dev: str
    mac: str

    def __str__(self) -> str:
        return f"fdb replace {self.mac} dev {self.dev} master static"


@dataclass(frozen=True, slots=True)
class DelPortFdb(_EntryOp):
    """Remove static bridge entry ``mac`` from port ``dev``; absent (or the port gone) is
    success."""

    dev: str
    mac: str

    def __str__(self) -> str:
        return f"fdb del {self.mac} dev {self.dev} master"


@dataclass(frozen=True, slots=True)
class PutFdb(_EntryOp):
    """Unicast VXLAN FDB entry ``mac -> dst`` on ``dev``: permanent, NTF_SELF, *replace* (so a
    MAC that moved to another VTEP is rewritten in place)."""

    dev: str
    mac: str
    dst: str

    def __str__(self) -> str:
        return f"fdb replace {self.mac} dst {self.dst} dev {self.dev} self permanent"


@dataclass(frozen=True, slots=True)
class AddFlood(_EntryOp):
    """All-zero FDB entry ``00:00:00:00:00:00 -> dst`` on ``dev`` with *append* semantics:
    several zero entries coexist and form the head-end replication list."""

    dev: str
    dst: str

    def __str__(self) -> str:
        return f"fdb append {ZERO_MAC} dst {self.dst} dev {self.dev} self permanent"


@dataclass(frozen=True, slots=True)
class DelFdb(_EntryOp):
    """Remove the VXLAN FDB entry ``mac -> dst`` from ``dev`` (zero MAC included). Absent is
    success."""

    dev: str
    mac: str
    dst: str

    def __str__(self) -> str:
        return f"fdb del {self.mac} dst {self.dst} dev {self.dev} self"


@dataclass(frozen=True, slots=True)
class PutNeigh(_EntryOp):
    """Permanent neighbour entry ``ip -> mac`` on ``dev`` (replace), answered by VXLAN proxy."""

    dev: str
    ip: str
    mac: str

    def __str__(self) -> str:
        return f"neigh replace {self.ip} lladdr {self.mac} dev {self.dev} permanent"


@dataclass(frozen=True, slots=True)
class DelNeigh(_EntryOp):
    """Remove the neighbour entry for ``ip`` on ``dev``. Absent is success."""

    dev: str
    ip: str

    def __str__(self) -> str:
        return f"neigh del {self.ip} dev {self.dev}"


@dataclass(frozen=True, slots=True)
class SyncFilters(Independent):
    """Make heddle's table ``inet heddle`` hold exactly ``spec`` (``controller.model.nft_filter``)
    in one atomic batch; ``stale_vnis`` are an earlier release's per-network sets to delete."""

    spec: FilterSpec
    stale_vnis: tuple[int, ...] = ()

    def __str__(self) -> str:
        vteps = sum(len(v) for _, v in self.spec.members)
        return f"sync filters: {len(self.spec.members)} network(s), {vteps} member VTEP(s)"


@dataclass(frozen=True, slots=True)
class GuardPort:
    """Make ``port``'s guard chain (``controller/model/nft_guards.py``) hold exactly ``guards``,
    in one atomic batch. Needs the port (a hook needs its device on Linux 6.1); provides
    ``peer``: the endpoint's side may come up only once what it sends is guarded, so a failed
    guard keeps the endpoint down (its ``ConfigureEndpoint`` is skipped)."""

    port: str
    peer: str
    guards: tuple[PortGuard, ...]

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({self.port})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset({self.peer})

    def __str__(self) -> str:
        return f"guard {self.port}: {self.guards[0].mac} {' '.join(g.ip for g in self.guards)}"


@dataclass(frozen=True, slots=True)
class UnguardPort(Independent):
    """Delete ``port``'s guard chain. Absent is success (Linux 6.1 deletes it with its device;
    later kernels keep it, detached)."""

    port: str

    def __str__(self) -> str:
        return f"unguard {self.port}"


@dataclass(frozen=True, slots=True)
class DropBridgeGuards:
    """Delete an earlier release's table ``bridge heddle`` (its guards, one chain for every
    port). Needs the peers of this pass's ``GuardPort`` ops, so it goes only once every port's
    own chain is in place. Absent is success."""

    after: tuple[str, ...] = ()

    @property
    def needs(self) -> frozenset[str]:
        return frozenset(self.after)

    @property
    def provides(self) -> frozenset[str]:
        return frozenset()

    def __str__(self) -> str:
        return "drop the earlier release's bridge guards"


KernelOp = (
    SyncFilters
    | GuardPort
    | UnguardPort
    | DropBridgeGuards
    | EnableForwarding
    | EnsureBridge
    | EnsureVxlan
    | EnsureVeth
    | ConfigureEndpoint
    | DelLink
    | PutFdb
    | AddFlood
    | DelFdb
    | PutNeigh
    | DelNeigh
    | PutPortFdb
    | DelPortFdb
)
"""Every op the kernel planner emits and the kernel drivers (real and fake) apply."""


def only_entries(ops: Iterable[KernelOp]) -> bool:
    """Whether ``ops`` only write entries (FDB, neighbour, static bridge entries) and the
    filters: no link is created, changed or deleted, so every ifindex stays as it was and the
    effect on an observation is known in advance (``controller/plan/kernel_incremental.py``).
    Pure."""
    return all(isinstance(op, _EntryOp | SyncFilters) for op in ops)

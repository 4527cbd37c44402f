"""Op vocabulary of the Open vSwitch data plane (OVSDB rows, OpenFlow tables, host links).

Contracts shared by every op (the same as ``kernel_ops``):

* **Idempotent and convergent.** ``Ensure*`` ops carry the complete desired attributes of their
  object and create it or bring it to them; deletes treat "already gone" as success.
* **Owned only.** OVSDB rows heddle creates carry ``external_ids:heddle-owner=heddle``; drivers
  refuse to modify or delete a bridge or port without it. Flows carry ``flows.COOKIE``.
* ``needs`` / ``provides`` name what an op depends on / creates, for ``backend.apply_all``:
  kernel links by name (as in ``kernel_ops``), ``ovs:<bridge>`` for a bridge, ``flows:<bridge>``
  for a bridge's table, ``port:<bridge>/<name>`` for a port written without waiting.
* ``str(op)`` is one log line.

The endpoint side of a veth (move into the namespace, rename, MAC, address, MTU, route) and link
deletion are the kernel backend's ``ConfigureEndpoint`` and ``DelLink``, reused as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.model.flow import Flow
from controller.model.naming import OWNER_ALIAS
from controller.plan.independent import Independent
from controller.plan.kernel_ops import VXLAN_PORT, ConfigureEndpoint, DelLink

OWNER_KEY = "heddle-owner"
OWNER_VALUE = OWNER_ALIAS
NETWORK_KEY = "heddle-network"
ENDPOINT_KEY = "heddle-endpoint"
RESTORE_KEY = "heddle-flow-restore"
"""Bridge ``external_ids`` key set while a flow restore is in progress (``BeginFlowRestore``)."""
FLOW_RESTORE_WAIT = "flow-restore-wait"

__all__ = [
    "VXLAN_PORT",
    "ArmFlowRestoreWait",
    "AwaitOvsPort",
    "BeginFlowRestore",
    "ConfigureEndpoint",
    "DelLink",
    "DelOvsBridge",
    "DelOvsPort",
    "DisableTxChecksum",
    "EndFlowRestore",
    "EnsureOvsBridge",
    "EnsureOvsPort",
    "EnsurePortVeth",
    "EnsureUnderlay",
    "ModFlows",
    "OvsOp",
    "ReplaceFlows",
    "ResolveVteps",
]


def bridge_token(bridge: str) -> str:
    return f"ovs:{bridge}"


def flows_token(bridge: str) -> str:
    return f"flows:{bridge}"


def port_token(bridge: str, name: str) -> str:
    return f"port:{bridge}/{name}"


@dataclass(frozen=True, slots=True)
class EnsureOvsBridge:
    """Bridge ``name`` (with its internal port) in ``fail_mode=secure``, ``datapath_type``,
    ``other_config:hwaddr`` = ``hwaddr`` (unset when ``None``), owned.

    Secure, because in standalone mode a restarted ovs-vswitchd installs a NORMAL flow and
    bridges every network together until the flows are back (notes R4)."""

    name: str
    datapath_type: str
    hwaddr: str | None = None

    @property
    def needs(self) -> frozenset[str]:
        return frozenset()

    @property
    def provides(self) -> frozenset[str]:
        return frozenset({bridge_token(self.name)})

    def __str__(self) -> str:
        hw = f" hwaddr {self.hwaddr}" if self.hwaddr else ""
        return f"ovs ensure bridge {self.name} datapath {self.datapath_type} fail_mode secure{hw}"


@dataclass(frozen=True, slots=True)
class DelOvsBridge(Independent):
    """Delete owned bridge ``name`` and its ports. Absent is success."""

    name: str

    def __str__(self) -> str:
        return f"ovs delete bridge {self.name}"


@dataclass(frozen=True, slots=True)
class EnsureOvsPort:
    """Port + interface ``name`` on ``bridge``: ``type`` ("" for a system device, "vxlan"),
    ``options``, pinned ``ofport_request=ofport``, owned, and for an endpoint port
    ``external_ids`` naming the endpoint (``network``/``endpoint``).

    With ``wait`` (the NIC and tunnel ports), drivers return once ovs-vswitchd has applied the
    change and fail clearly if the interface got ofport -1 (device missing, bad options) or
    another ofport than requested. Without (endpoint ports), the write returns once it is
    sent to OVSDB, and ``AwaitOvsPort`` later in the pass waits for ovs-vswitchd and checks the
    number: the endpoint's side and flows are written while ovs-vswitchd adds its port (5-8 ms
    on the ``netdev`` datapath here: the largest stage of an ovs endpoint's path to its first
    packet; flows may name a port before it exists, docs/platform.md O10). ``link`` is the
    kernel device this port opens when heddle creates it (an endpoint veth), else ``None``."""

    bridge: str
    name: str
    ofport: int
    type: str = ""
    options: tuple[tuple[str, str], ...] = ()
    network: str | None = None
    endpoint: str | None = None
    link: str | None = None
    wait: bool = True

    @property
    def needs(self) -> frozenset[str]:
        extra = {self.link} if self.link else set()
        return frozenset({bridge_token(self.bridge), *extra})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset() if self.wait else frozenset({port_token(self.bridge, self.name)})

    def __str__(self) -> str:
        kind = f" type {self.type}" if self.type else ""
        opts = "".join(f" {k}={v}" for k, v in self.options)
        who = f" endpoint {self.network}/{self.endpoint}" if self.endpoint else ""
        return f"ovs ensure port {self.bridge}/{self.name} ofport {self.ofport}{kind}{opts}{who}"


@dataclass(frozen=True, slots=True)
class AwaitOvsPort:
    """Wait until ovs-vswitchd has applied the write of port ``name`` on ``bridge`` (an
    ``EnsureOvsPort`` without ``wait`` earlier in the pass) and check that the interface got
    ``ofport``: fails as ``EnsureOvsPort`` would have (ofport -1 with ovs-vswitchd's reason, or
    another number). Changes nothing."""

    bridge: str
    name: str
    ofport: int

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({port_token(self.bridge, self.name)})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset()

    def __str__(self) -> str:
        return f"ovs await port {self.bridge}/{self.name} ofport {self.ofport}"


@dataclass(frozen=True, slots=True)
class DelOvsPort(Independent):
    """Remove owned port ``name`` from ``bridge``. Absent is success."""

    bridge: str
    name: str

    def __str__(self) -> str:
        return f"ovs delete port {self.bridge}/{self.name}"


@dataclass(frozen=True, slots=True)
class ReplaceFlows:
    """Make ``flows`` the whole table of ``bridge`` in one atomic bundle
    (``ovs-ofctl --bundle replace-flows``): used when the table has none of our flows (a new
    bridge, a restarted ovs-vswitchd) or most of it changes. Never flush-then-add."""

    bridge: str
    flows: tuple[Flow, ...]

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({bridge_token(self.bridge)})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset({flows_token(self.bridge)})

    def __str__(self) -> str:
        return f"flows replace {self.bridge}: {len(self.flows)} flows (bundle)"


@dataclass(frozen=True, slots=True)
class ModFlows:
    """Delete ``delete`` (strict, cookie-scoped) and add ``add`` on ``bridge`` in one atomic
    bundle: an incremental change that costs O(change), not O(table). Adding a flow whose key
    exists replaces its actions, so a changed flow is only in ``add``."""

    bridge: str
    add: tuple[Flow, ...]
    delete: tuple[Flow, ...]

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({bridge_token(self.bridge)})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset({flows_token(self.bridge)})

    def __str__(self) -> str:
        return f"flows modify {self.bridge}: +{len(self.add)} -{len(self.delete)} (bundle)"


@dataclass(frozen=True, slots=True)
class ArmFlowRestoreWait(Independent):
    """Set ``Open_vSwitch:other_config:flow-restore-wait=true`` and keep it so.

    ovs-vswitchd reads the key only at start-up (and until it first sees it false): armed, a
    restarted ovs-vswitchd keeps the datapath's flows and processes no packets until the agent
    has put the flows back and released it (``EndFlowRestore``), instead of running on an empty
    table. A running ovs-vswitchd ignores the key once released, so keeping it armed is free."""

    def __str__(self) -> str:
        return "ovs set other_config:flow-restore-wait=true"


@dataclass(frozen=True, slots=True)
class BeginFlowRestore:
    """Write-ahead marker before re-installing flows into a possibly waiting ovs-vswitchd:
    ``external_ids:heddle-flow-restore=pending`` on ``bridge``. If the agent dies before
    ``EndFlowRestore``, the next pass sees the marker and releases ovs-vswitchd then, so it can
    never stay waiting behind a table that looks converged."""

    bridge: str

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({bridge_token(self.bridge)})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset()

    def __str__(self) -> str:
        return f"ovs begin flow restore (marker on {self.bridge})"


@dataclass(frozen=True, slots=True)
class EndFlowRestore:
    """Release ovs-vswitchd after the flows are in: ``flow-restore-wait=false``, wait until
    ovs-vswitchd has applied that configuration, then re-arm (``rearm``) and remove the marker
    from ``bridge``. Skipped when a flow install of this pass (``tables``) failed."""

    bridge: str
    tables: tuple[str, ...]
    rearm: bool = True

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({bridge_token(self.bridge), *(flows_token(b) for b in self.tables)})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset()

    def __str__(self) -> str:
        again = ", re-arm" if self.rearm else ""
        return f"ovs end flow restore: flow-restore-wait=false{again} (marker on {self.bridge})"


@dataclass(frozen=True, slots=True)
class EnsurePortVeth:
    """A veth pair for an endpoint whose host side ``host_name`` is an OVS port: host side MTU,
    up, owned (no Linux bridge master: unlike ``kernel_ops.EnsureVeth``).

    When created with ``netns``, the peer is born directly inside that namespace as ``ifname``
    with ``peer_mac`` and ``mtu`` (and owned): moving a device between namespaces costs the
    kernel 15-30 ms of RCU synchronisation, creating it in place under 1 ms (as
    ``kernel_ops.EnsureVeth``). Without ``netns`` (Docker moves the peer itself) the peer is
    born in the host namespace as ``peer_name``, and its MAC and MTU are kept converged while it
    is still there. With ``tx_checksum_off``, TX checksum offload goes off on the peer where it
    is born (the userspace datapath forwards partial checksums as they are: TCP breaks
    otherwise; the setting moves with the device, so Docker-style endpoints get it too)."""

    host_name: str
    peer_name: str
    mtu: int
    peer_mac: str
    tx_checksum_off: bool = False
    netns: str | None = None
    ifname: str = "eth0"

    @property
    def needs(self) -> frozenset[str]:
        return frozenset()

    @property
    def provides(self) -> frozenset[str]:
        return frozenset({self.host_name, self.peer_name})

    def __str__(self) -> str:
        tx = " tx-checksum off" if self.tx_checksum_off else ""
        where = f"{self.netns}/{self.ifname}" if self.netns else self.peer_name
        return (
            f"ensure veth {self.host_name} mtu {self.mtu} peer {where} address {self.peer_mac}{tx}"
        )


@dataclass(frozen=True, slots=True)
class DisableTxChecksum:
    """TX checksum offload off on ``ifname`` inside ``netns`` (``ethtool -K ifname tx off``).
    Fails for this endpoint only when the namespace or interface is missing."""

    netns: str
    ifname: str
    peer_name: str

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({self.peer_name})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset()

    def __str__(self) -> str:
        return f"ethtool -K {self.netns}/{self.ifname} tx off"


class _OnForwardingPhy:
    """Mixin for an op on br-phy's underlay: it needs br-phy and its flows (the NIC <-> LOCAL
    forwarding) and provides nothing other ops wait for."""

    __slots__ = ()
    phy: str

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({bridge_token(self.phy), flows_token(self.phy)})

    @property
    def provides(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True, slots=True)
class EnsureUnderlay(_OnForwardingPhy):
    """OVS userspace tunnelling (``netdev`` datapath): the underlay NIC ``nic`` is up with ARP
    off and without the VTEP address; the VTEP ``vtep/prefixlen`` is on ``phy`` (br-phy's
    internal port), which is up. ``prefixlen`` comes from where the address was found; ``None``
    means it is on neither device, which drivers report as a failure (heddle does not invent
    underlay addressing). Never removes other addresses."""

    nic: str
    phy: str
    vtep: str
    prefixlen: int | None

    def __str__(self) -> str:
        plen = self.prefixlen if self.prefixlen is not None else "?"
        return f"underlay: {self.vtep}/{plen} on {self.phy} up, {self.nic} up arp off no address"


@dataclass(frozen=True, slots=True)
class ResolveVteps(_OnForwardingPhy):
    """Member VTEPs ``peers`` in ovs-vswitchd's tunnel-neighbour cache of ``phy`` before any
    flow tunnels to them (``netdev`` only): each is asked with ARP from ``vtep`` on br-phy and
    its answer set in OVS (``tnl/neigh/set``), so the first tunnelled packet is not dropped
    while OVS resolves it (docs/platform.md O7). A VTEP that does not answer is left to OVS's
    own resolution and reported; it is asked again after the driver's retry interval."""

    phy: str
    vtep: str
    peers: tuple[str, ...]

    def __str__(self) -> str:
        return f"resolve VTEPs {', '.join(self.peers)} on {self.phy}"


OvsOp = (
    EnsureOvsBridge
    | DelOvsBridge
    | EnsureOvsPort
    | AwaitOvsPort
    | DelOvsPort
    | ReplaceFlows
    | ModFlows
    | ArmFlowRestoreWait
    | BeginFlowRestore
    | EndFlowRestore
    | EnsurePortVeth
    | DisableTxChecksum
    | EnsureUnderlay
    | ResolveVteps
    | ConfigureEndpoint
    | DelLink
)
"""Every op the ovs planner emits and the ovs drivers (real and fake) apply."""

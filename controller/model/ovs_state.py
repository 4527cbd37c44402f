"""Observed state of the Open vSwitch data plane: what ``OvsDataPlane.observe`` reports and the
ovs planner reads. Plain frozen values, so observations compare with ``==`` (the fake's and the
real driver's).

Only what heddle may own is described in full. A bridge or port that has a name heddle wants but
no owner marker is reported with ``owned=False`` so the planner leaves it alone (and plans the
``Ensure*`` op the driver will refuse, reporting the conflict on every pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.model.flow import Flow
from controller.model.kernel_state import KernelState


@dataclass(frozen=True, slots=True)
class PortState:
    """A port of a bridge with its (single) interface.

    ``ofport`` is what ovs-vswitchd assigned (``None``: not yet, ``-1``: failed, see ``error``).
    ``network``/``endpoint`` come from ``external_ids`` of an endpoint port."""

    name: str
    owned: bool
    type: str = ""
    options: tuple[tuple[str, str], ...] = ()
    ofport_request: int | None = None
    ofport: int | None = None
    error: str | None = None
    network: str | None = None
    endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class BridgeState:
    """A bridge. ``ports`` excludes the bridge's own internal port. ``used_ofports`` holds every
    OpenFlow port number taken or requested on the bridge by any interface (foreign ones too),
    so new endpoint ports are never pinned to a number in use."""

    name: str
    owned: bool
    datapath_type: str = ""
    fail_mode: str | None = None
    hwaddr: str | None = None
    restore_pending: bool = False
    ports: Mapping[str, PortState] = field(default_factory=dict)
    used_ofports: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class OvsdbState:
    """The rows the planner reads. ``bridges``: the bridges with a name heddle uses plus every
    owned bridge. ``flow_restore_wait``: ``Open_vSwitch:other_config:flow-restore-wait`` is
    ``"true"``."""

    bridges: Mapping[str, BridgeState] = field(default_factory=dict)
    flow_restore_wait: bool = False


@dataclass(frozen=True, slots=True)
class UnderlayState:
    """The devices of OVS userspace tunnelling (``netdev`` only), in the host namespace.

    Addresses are IPv4 ``ip/prefixlen`` strings. ``nic_noarp`` is IFF_NOARP on the NIC.
    ``tunnel_neighbours``: the VTEPs ovs-vswitchd's tunnel-neighbour cache holds a MAC for on
    br-phy; ``unanswered``: VTEPs the agent asked recently that did not answer (not asked
    again until the driver's retry interval has passed)."""

    nic_present: bool = False
    nic_up: bool = False
    nic_noarp: bool = False
    nic_addresses: frozenset[str] = frozenset()
    phy_present: bool = False
    phy_up: bool = False
    phy_addresses: frozenset[str] = frozenset()
    tunnel_neighbours: frozenset[str] = frozenset()
    unanswered: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class OvsState:
    """One observation of the ovs data plane.

    ``flows``: heddle's flows (by cookie) per owned bridge that exists; a bridge missing here
    has no table to read. ``kernel``: heddle's links and the endpoint sides (the kernel
    backend's observation). ``tx_checksum``: TX checksum offload per ``(netns, ifname)``
    endpoint side (``netdev`` only; ``None`` when the interface is not there).
    ``underlay``: ``None`` unless the datapath is ``netdev``."""

    ovsdb: OvsdbState = field(default_factory=OvsdbState)
    flows: Mapping[str, frozenset[Flow]] = field(default_factory=dict)
    kernel: KernelState = field(default_factory=KernelState)
    tx_checksum: Mapping[tuple[str, str], bool | None] = field(default_factory=dict)
    underlay: UnderlayState | None = None

"""Observed state of the kernel data plane: what ``observe`` reports and ``plan_kernel`` reads.

Plain frozen values, so two observations compare with ``==`` (the contract test compares the
fake's state with the real kernel's). Only heddle's own objects are described in full; links
whose names look like ours but that carry no owner marker are reported with ``owned=False`` so
the planner can leave them alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.model.nft_filter import FilterSpec
from controller.model.nft_guards import PortGuard


@dataclass(frozen=True, slots=True)
class VxlanAttrs:
    """Creation-time attributes of a VXLAN device (the kernel cannot change them in place)."""

    vni: int
    local: str | None
    port: int
    learning: bool
    proxy: bool


@dataclass(frozen=True, slots=True)
class LinkState:
    """A link in the host namespace whose name starts with ``hd``.

    ``owned`` is ``ifalias == OWNER_ALIAS``. ``master`` is the master's *name* (``None`` when
    not enslaved). ``mcast_snooping`` is set for bridges only, ``vxlan`` for VXLAN devices only.
    ``learning`` is the bridge-port learning flag of a link enslaved to a Linux bridge (``None``
    for any other link). ``index`` and the MACs of bridges/vxlan/host-side veths are assigned by
    the kernel.
    """

    name: str
    kind: str
    owned: bool
    index: int = 0
    mtu: int = 1500
    mac: str = ""
    up: bool = False
    master: str | None = None
    mcast_snooping: bool | None = None
    vxlan: VxlanAttrs | None = None
    learning: bool | None = None


ZERO_MAC = "00:00:00:00:00:00"
"""The MAC of a VXLAN device's flood entries: one per destination (the head-end replication
list), where any other MAC has one destination at most."""


@dataclass(frozen=True, slots=True, order=True)
class FdbEntry:
    """A VXLAN FDB entry (NTF_SELF, with a destination): ``mac -> dst``."""

    mac: str
    dst: str


@dataclass(frozen=True, slots=True, order=True)
class PortFdbEntry:
    """A static entry in a bridge's own FDB (NTF_MASTER, NUD_NOARP): frames to ``mac`` leave
    by bridge port ``port``. Learned (dynamic) and the bridge's local (permanent) entries are
    not reported: heddle neither relies on nor removes them."""

    mac: str
    port: str


@dataclass(frozen=True, slots=True, order=True)
class NeighEntry:
    """An IPv4 or IPv6 neighbour entry on a VXLAN device; ``permanent`` is NUD_PERMANENT."""

    ip: str
    mac: str
    permanent: bool = True


@dataclass(frozen=True, slots=True)
class EndpointSide:
    """The endpoint interface ``ifname`` inside netns ``netns``, as last observed.

    ``netns_exists`` False: the namespace is missing (nothing else is meaningful).
    ``present`` False: no interface called ``ifname`` there. ``owned`` False: an interface of
    that name exists but heddle did not create it (never touched). ``addresses`` are its IPv4
    and global IPv6 ``ip/prefixlen`` strings; ``gateway`` / ``gateway6`` are the IPv4 / IPv6
    default routes' gateways, if any.
    """

    netns: str
    ifname: str
    netns_exists: bool = True
    present: bool = False
    owned: bool = False
    mac: str = ""
    mtu: int = 0
    up: bool = False
    addresses: frozenset[str] = frozenset()
    gateway: str | None = None
    gateway6: str | None = None


@dataclass(frozen=True, slots=True)
class KernelState:
    """One observation of the host's kernel data plane.

    ``links``: every ``hd*`` link in the host namespace by name (owned or not).
    ``fdb`` / ``neigh``: entries per *owned* VXLAN device name (a device with none maps to an
    empty set). ``port_fdb``: the static entries of each *owned* bridge (by bridge name; a
    bridge with none maps to an empty set). ``endpoints``: keyed by ``(netns, ifname)`` for every
    endpoint namespace the observation was asked to look into. ``filters``: what heddle's
    nftables table ``inet heddle`` holds (``None`` when it is missing, malformed, or the backend
    does not keep it); ``filter_vnis``: an earlier release's per-network sets found in it (to
    delete); ``guards``: the guard chains of table ``netdev heddle``, by port (``()``: a chain of
    another shape); ``bridge_guards``: an earlier release's table ``bridge heddle`` is there.
    ``bridge_addresses``: the IPv4 addresses (``ip/prefixlen``, sorted) of every *owned* bridge
    that has any.
    ``forwarding``: ``net.ipv4.ip_forward`` of the host namespace (``None``: not read).
    """

    links: Mapping[str, LinkState] = field(default_factory=dict)
    fdb: Mapping[str, frozenset[FdbEntry]] = field(default_factory=dict)
    neigh: Mapping[str, frozenset[NeighEntry]] = field(default_factory=dict)
    port_fdb: Mapping[str, frozenset[PortFdbEntry]] = field(default_factory=dict)
    endpoints: Mapping[tuple[str, str], EndpointSide] = field(default_factory=dict)
    filters: FilterSpec | None = None
    filter_vnis: tuple[int, ...] = ()
    guards: Mapping[str, tuple[PortGuard, ...]] = field(default_factory=dict)
    bridge_guards: bool = False
    bridge_addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    forwarding: bool | None = None

    def owned(self, name: str) -> LinkState | None:
        """The link called ``name`` if it exists and is heddle's, else ``None``."""
        link = self.links.get(name)
        return link if link is not None and link.owned else None

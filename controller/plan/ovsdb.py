"""Desired OVSDB rows of the ovs backend and their comparison with observed rows. Pure.

What a host has (README.md "Open vSwitch backend"; docs/platform.md O3, O5):

* the integration bridge ``layout.bridge``: ``fail_mode=secure``, ``datapath_type``, owned;
  on it one flow-based VXLAN port (``remote_ip=flow``, ``key=flow``, ``dst_port=4789``) pinned
  to ``TUNNEL_OFPORT``, and one port per local endpoint (its veth's host side) pinned to an
  OpenFlow port number chosen by ``assign_ofports`` and marked with the endpoint;
* ``netdev`` only: ``layout.phy_bridge`` (br-phy) with a fixed MAC distinct from the NIC's, and
  the underlay NIC on it pinned to ``NIC_OFPORT``.

OpenFlow port numbers are pinned (``ofport_request``) so that flows can name ports before
ovs-vswitchd has opened them and so that they survive restarts of anything. Numbers are kept
once given (they live in OVSDB, so a restarted agent reads them back): the planner only picks
numbers for new endpoints, lowest free first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from controller.model.errors import InvalidRecord
from controller.model.naming import IFNAME_MAX, veth_host_name
from controller.model.ovs_state import BridgeState, OvsdbState, PortState
from controller.model.view import HostView
from controller.plan.flows import EndpointKey
from controller.plan.ovs_ops import VXLAN_PORT, EnsureOvsBridge, EnsureOvsPort

TUNNEL_OFPORT = 1
NIC_OFPORT = 1
FIRST_ENDPOINT_OFPORT = 10
MAX_OFPORT = 0xFEFF  # OFPP_MAX: above are reserved port numbers
DEFAULT_BRIDGE = "br-heddle"
DEFAULT_PHY_BRIDGE = "br-phy"
TUNNEL_PORT = "hdvxlan"

Datapath = Literal["system", "netdev"]


def parse_datapath(value: str) -> Datapath:
    """``value`` as a ``Datapath``; raises ``InvalidRecord`` for anything else (a flag value)."""
    if value == "system":
        return "system"
    if value == "netdev":
        return "netdev"
    raise InvalidRecord(f"--ovs-datapath {value!r} must be system or netdev")


@dataclass(frozen=True, slots=True)
class OvsLayout:
    """Static settings of one host's ovs data plane (from the agent's flags).

    ``datapath``: ``system`` (kernel module; production) or ``netdev`` (userspace; hosts without
    ``openvswitch.ko``), which needs ``underlay_dev``, the NIC that carries the VTEP.
    ``restore_wait``: keep ``flow-restore-wait`` armed (see ``ArmFlowRestoreWait``); it is a
    switch-wide setting, so turn it off when the OVS instance is shared with another controller.
    Raises ``InvalidRecord`` for an impossible combination."""

    datapath: Datapath = "system"
    bridge: str = DEFAULT_BRIDGE
    underlay_dev: str | None = None
    phy_bridge: str = DEFAULT_PHY_BRIDGE
    tunnel_port: str = TUNNEL_PORT
    restore_wait: bool = True

    def __post_init__(self) -> None:
        if self.datapath not in ("system", "netdev"):
            raise InvalidRecord(f"--ovs-datapath {self.datapath!r} must be system or netdev")
        if self.datapath == "netdev" and not self.underlay_dev:
            raise InvalidRecord("--ovs-datapath netdev needs --underlay-dev (the VTEP's NIC)")
        names = [self.bridge, self.tunnel_port]
        if self.datapath == "netdev":
            names += [self.phy_bridge, str(self.underlay_dev)]
        for name in names:
            if not 0 < len(name) <= IFNAME_MAX:
                raise InvalidRecord(f"OVS name {name!r} must have 1..{IFNAME_MAX} characters")
        if len(set(names)) != len(names):
            raise InvalidRecord(f"OVS names must differ: {', '.join(names)}")

    @property
    def netdev(self) -> bool:
        return self.datapath == "netdev"

    @property
    def bridges(self) -> tuple[str, ...]:
        """The bridges heddle keeps, in the order they are built."""
        return (self.phy_bridge, self.bridge) if self.netdev else (self.bridge,)


def phy_hwaddr(vtep: str) -> str:
    """br-phy's MAC: fixed (peers' tunnel neighbour entries stay valid across restarts),
    locally administered, and never the NIC's own (docs/platform.md O3: with the NIC's MAC the
    kernel answers every tunnel packet with ICMP port unreachable). From an IPv6 VTEP its low
    32 bits."""
    packed = ipaddress.ip_address(vtep).packed[-4:]
    return ":".join(f"{b:02x}" for b in (0x02, 0x68, *packed))


TUNNEL_OPTIONS: tuple[tuple[str, str], ...] = (
    ("dst_port", str(VXLAN_PORT)),
    ("key", "flow"),
    ("remote_ip", "flow"),
)


def assign_ofports(view: HostView, bridge: BridgeState | None) -> dict[EndpointKey, int]:
    """OpenFlow port number of every local endpoint of ``view``. Pure and deterministic.

    An endpoint whose owned port already has a valid ``ofport_request`` keeps it, unless
    ovs-vswitchd gave the interface another number (someone else holds it): then it gets a new
    one. New endpoints get the lowest number from ``FIRST_ENDPOINT_OFPORT`` up that no interface
    of the bridge uses or requests, in view order. Endpoints beyond ``MAX_OFPORT`` get none."""
    ports = bridge.ports if bridge is not None and bridge.owned else {}
    taken = set(bridge.used_ofports if bridge is not None else ())
    taken.add(TUNNEL_OFPORT)
    out: dict[EndpointKey, int] = {}
    pending: list[EndpointKey] = []
    for nv in view.networks:
        for ep in nv.local:
            key = (ep.network, ep.id)
            port = ports.get(veth_host_name(ep.network, ep.id))
            if port is not None and _keeps_number(port, ep.network, ep.id):
                assert port.ofport_request is not None
                out[key] = port.ofport_request
            else:
                pending.append(key)
    taken |= set(out.values())
    candidate = FIRST_ENDPOINT_OFPORT
    for key in pending:
        while candidate in taken:
            candidate += 1
        if candidate > MAX_OFPORT:
            break
        out[key] = candidate
        taken.add(candidate)
    return out


def _keeps_number(port: PortState, network: str, endpoint: str) -> bool:
    req = port.ofport_request
    return (
        port.owned
        and port.network == network
        and port.endpoint == endpoint
        and req is not None
        and FIRST_ENDPOINT_OFPORT <= req <= MAX_OFPORT
        and port.ofport in (None, -1, req)
    )


def desired_bridges(layout: OvsLayout, vtep: str) -> tuple[EnsureOvsBridge, ...]:
    """The bridges to ensure, in build order (br-phy first: it carries the underlay)."""
    out: list[EnsureOvsBridge] = []
    if layout.netdev:
        out.append(EnsureOvsBridge(layout.phy_bridge, "netdev", phy_hwaddr(vtep)))
    out.append(EnsureOvsBridge(layout.bridge, layout.datapath))
    return tuple(out)


def desired_ports(
    layout: OvsLayout, view: HostView, ofports: Mapping[EndpointKey, int]
) -> tuple[EnsureOvsPort, ...]:
    """Every port heddle wants, in build order: the NIC on br-phy (``netdev``), the tunnel port
    (both waited for), then one per local endpoint that has a number (awaited later in the
    pass: ``EnsureOvsPort.wait``)."""
    out: list[EnsureOvsPort] = []
    if layout.netdev and layout.underlay_dev is not None:
        out.append(EnsureOvsPort(layout.phy_bridge, layout.underlay_dev, NIC_OFPORT))
    out.append(
        EnsureOvsPort(layout.bridge, layout.tunnel_port, TUNNEL_OFPORT, "vxlan", TUNNEL_OPTIONS)
    )
    for nv in view.networks:
        for ep in nv.local:
            number = ofports.get((ep.network, ep.id))
            if number is None:
                continue
            name = veth_host_name(ep.network, ep.id)
            out.append(
                EnsureOvsPort(
                    layout.bridge,
                    name,
                    number,
                    network=ep.network,
                    endpoint=ep.id,
                    link=name,
                    wait=False,
                )
            )
    return tuple(out)


def bridge_ok(want: EnsureOvsBridge, have: BridgeState | None) -> bool:
    """``have`` is owned and already as ``want`` says."""
    return (
        have is not None
        and have.owned
        and have.datapath_type == want.datapath_type
        and have.fail_mode == "secure"
        and have.hwaddr == want.hwaddr
    )


def port_ok(want: EnsureOvsPort, have: PortState | None) -> bool:
    """``have`` is owned, configured as ``want`` says, and ovs-vswitchd gave it the number."""
    return (
        have is not None
        and have.owned
        and have.type == want.type
        and have.options == want.options
        and have.ofport_request == want.ofport
        and have.ofport == want.ofport
        and have.network == want.network
        and have.endpoint == want.endpoint
    )


def port_of(state: OvsdbState, bridge: str, name: str) -> PortState | None:
    br = state.bridges.get(bridge)
    return br.ports.get(name) if br is not None else None

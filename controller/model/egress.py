"""Which networks get egress on a host, and why the others do not. Pure.

A network created with ``egress: "masquerade"`` gets, on every host with a local endpoint, its
gateway address on its bridge and its traffic to anything outside the overlays forwarded and
masqueraded out of the host's uplink (``controller/model/nft_filter.py`` renders the rules,
``controller/plan/kernel.py`` plans the bridge address and forwarding). Refused, with a reason
the agent reports:

* on the ovs backend: it has no Linux bridge to hold the gateway, and its flows do not route
  (the network works as without egress: its endpoints reach the overlay only);
* a network whose subnet overlaps the subnet of another egress network on the same host (the
  lower VNI keeps egress): connection tracking cannot tell two identical source addresses of
  two networks apart, so their replies could reach the wrong network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from controller.model.naming import bridge_name, derive_mac
from controller.model.records import Network


@dataclass(frozen=True, slots=True, order=True)
class Gateway:
    """Egress of network ``vni`` on this host: ``address``/``prefixlen`` on its bridge."""

    vni: int
    subnet: str
    address: str
    prefixlen: int

    @property
    def bridge(self) -> str:
        return bridge_name(self.vni)

    @property
    def mac(self) -> str:
        """The bridge's MAC: the same on every host (derived like an endpoint's), so an
        endpoint's neighbour entry for the gateway stays right whichever ports come and go."""
        return derive_mac(self.vni, self.address)

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


def egress_gateways(
    networks: Iterable[Network], backend: str
) -> tuple[tuple[Gateway, ...], tuple[str, ...]]:
    """The gateways this host holds for ``networks`` (those with a local endpoint), sorted by
    VNI, and the reasons for each egress refused (see the module docstring)."""
    wanted = sorted((n for n in networks if n.egress is not None), key=lambda n: n.vni)
    if not wanted:
        return (), ()
    if backend != "kernel":
        return (), tuple(
            f"network {n.name}: egress {n.egress} is not provided by the {backend} backend "
            "(its endpoints reach the overlay only)"
            for n in wanted
        )
    out: list[Gateway] = []
    taken: list[tuple[ipaddress.IPv4Network, str]] = []
    problems: list[str] = []
    for n in wanted:
        assert n.gateway is not None and n.subnet is not None  # a Network with egress has them
        subnet = ipaddress.IPv4Network(n.subnet)
        clash = next((name for s, name in taken if s.overlaps(subnet)), None)
        if clash is not None:
            problems.append(
                f"network {n.name}: egress refused on this host: subnet {n.subnet} overlaps "
                f"egress network {clash}'s"
            )
            continue
        taken.append((subnet, n.name))
        out.append(Gateway(n.vni, n.subnet, n.gateway, subnet.prefixlen))
    return tuple(out), tuple(problems)

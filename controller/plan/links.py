"""What both planners (``plan/kernel.py``, ``plan/ovs.py``) say alike about heddle's links:
which links are heddle's, how an endpoint's side in its namespace is configured and when it
is as desired, and which owned links nobody wants any more. Pure.
"""

from __future__ import annotations

from controller.model.kernel_state import EndpointSide, KernelState, LinkState
from controller.model.naming import PREFIX
from controller.model.records import Endpoint
from controller.model.view import NetworkView
from controller.plan.kernel_ops import ConfigureEndpoint, DelLink, KernelOp

_VETH_HOST = PREFIX + "v"
_VETH_PEER = PREFIX + "p"


def is_owned(link: LinkState) -> bool:
    """Ownership rule: ``hd`` name prefix *and* the owner ifalias (``OWNER_ALIAS``, recorded by
    the driver as ``LinkState.owned``); never one without the other."""
    return link.owned and link.name.startswith(PREFIX)


def configure_endpoint(ep: Endpoint, nv: NetworkView, peer: str, mtu: int) -> ConfigureEndpoint:
    """The ``ConfigureEndpoint`` that gives ``ep``'s side (``peer`` while in the host
    namespace) its MAC, MTU, one address per family of its network and a default route via each
    gateway the network has. Pure; ``ep.netns`` must be set."""
    assert ep.netns is not None
    net = nv.network
    return ConfigureEndpoint(
        netns=ep.netns,
        peer_name=peer,
        ifname=ep.ifname,
        mac=ep.mac,
        addresses=tuple(f"{a}/{net.prefixlen_of(a)}" for a in ep.addresses),
        mtu=mtu,
        gateways=tuple(g for g in (net.gateway, net.gateway6) if g is not None),
    )


def side_ok(side: EndpointSide | None, want: ConfigureEndpoint) -> bool:
    """Whether an endpoint's side in its namespace is present, heddle's, up and configured as
    ``want`` says (MAC, MTU, addresses, gateways)."""
    return (
        side is not None
        and side.netns_exists
        and side.present
        and side.owned
        and side.mac == want.mac
        and side.mtu == want.mtu
        and side.up
        and side.addresses.issuperset(want.addresses)
        and all(g in (side.gateway, side.gateway6) for g in want.gateways)
    )


def stale_link_dels(actual: KernelState, desired: set[str]) -> list[KernelOp]:
    """Owned links nobody wants, in a stable order: veths, VXLAN devices, bridges, others.

    A peer (``hdp``) whose host side (``hdv`` with the same token) still exists is not deleted
    on its own: it goes with its partner."""
    stale = [
        link
        for name, link in sorted(actual.links.items())
        if name not in desired and is_owned(link)
    ]

    def rank(link: LinkState) -> int:
        return {"veth": 0, "vxlan": 1, "bridge": 2}.get(link.kind, 3)

    ops: list[KernelOp] = []
    for link in sorted(stale, key=lambda lk: (rank(lk), lk.name)):
        if link.name.startswith(_VETH_PEER):
            partner = _VETH_HOST + link.name[len(_VETH_PEER) :]
            if partner in actual.links:
                continue  # goes with its partner (a veth pair dies together)
        ops.append(DelLink(link.name))
    return ops

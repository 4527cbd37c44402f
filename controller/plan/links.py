"""What both planners (``plan/kernel.py``, ``plan/ovs.py``) say alike about heddle's links:
which links are heddle's, when an endpoint's side in its namespace is as desired, and which
owned links nobody wants any more. Pure.
"""

from __future__ import annotations

from controller.model.kernel_state import EndpointSide, KernelState, LinkState
from controller.model.naming import PREFIX
from controller.model.records import Endpoint
from controller.model.view import NetworkView
from controller.plan.kernel_ops import DelLink, KernelOp

_VETH_HOST = PREFIX + "v"
_VETH_PEER = PREFIX + "p"


def is_owned(link: LinkState) -> bool:
    """Ownership rule: ``hd`` name prefix *and* the owner ifalias (``OWNER_ALIAS``, recorded by
    the driver as ``LinkState.owned``); never one without the other."""
    return link.owned and link.name.startswith(PREFIX)


def side_ok(side: EndpointSide | None, ep: Endpoint, nv: NetworkView, mtu: int) -> bool:
    """Whether ``ep``'s side in its namespace is present, heddle's, up and configured as
    desired (MAC, MTU, address, gateway)."""
    gateway = nv.network.gateway
    return (
        side is not None
        and side.netns_exists
        and side.present
        and side.owned
        and side.mac == ep.mac
        and side.mtu == mtu
        and side.up
        and f"{ep.ip}/{nv.network.prefixlen}" in side.addresses
        and (gateway is None or side.gateway == gateway)
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

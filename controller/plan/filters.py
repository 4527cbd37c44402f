"""The kernel backend's filters, planned: table ``inet heddle`` (``plan_filters``: which VTEPs
each VNI accepts, and the egress gateways) and the endpoint ports' guards (``desired_guards``,
``stale_guards``), for ``controller/plan/kernel.py``. Pure.

Why the two are planned apart: the table is one object for the whole host, synced before the
entries that need a new member and after those of a leaving one; a port's guard chain belongs
to its port, and can only be written once the port exists (docs/platform.md K19), so it is
planned with the port's own ops.
"""

from __future__ import annotations

from controller.model.egress import Gateway
from controller.model.kernel_state import KernelState
from controller.model.naming import veth_host_name
from controller.model.nft_filter import FilterSpec, make_spec
from controller.model.nft_guards import PortGuard
from controller.model.records import Endpoint
from controller.model.view import HostView
from controller.plan.kernel_ops import KernelOp, SyncFilters, UnguardPort

__all__ = ["desired_filters", "desired_guards", "plan_filters", "stale_guards"]


def desired_filters(view: HostView, gateways: tuple[Gateway, ...]) -> FilterSpec:
    """The filters ``view`` asks for: per network, the VTEPs of its other member hosts; the
    host's egress gateways (``controller/plan/kernel.py``'s ``gateways_of``). Pure."""
    return make_spec({nv.network.vni: nv.flood for nv in view.networks}, gateways)


def desired_guards(ep: Endpoint) -> tuple[PortGuard, ...]:
    """``ep``'s port guarded to its MAC and addresses (sorted; ``()`` for an endpoint without
    addresses, whose port is not guarded). Pure."""
    port = veth_host_name(ep.network, ep.id)
    return tuple(sorted({PortGuard(port, ep.mac, ip) for ip in ep.addresses}))


def plan_filters(
    view: HostView, actual: KernelState, gateways: tuple[Gateway, ...]
) -> tuple[list[KernelOp], list[KernelOp]]:
    """Table ``inet heddle``: (before everything, after the deletes). A new member VTEP is
    admitted before the FDB entries that use it exist; a leaving one is removed only after the
    entries it covered are gone. Both ``[]`` when converged."""
    want = desired_filters(view, gateways)
    have = actual.filters
    if have == want:
        return [], []
    stale = actual.filter_vnis  # an earlier release's per-network sets: none is wanted
    if have is None:
        return [SyncFilters(want, stale)], []
    both = have.union(want)
    if both == want:
        return [SyncFilters(want, stale)], []
    if both == have:
        return [], [SyncFilters(want, stale)]
    return [SyncFilters(both)], [SyncFilters(want, stale)]


def stale_guards(view: HostView, actual: KernelState) -> list[KernelOp]:
    """``UnguardPort`` for every guard chain no local endpoint of ``view`` wants (planned
    after the link deletes: a leaving endpoint stays guarded until its veth is gone). Pure."""
    wanted = {
        veth_host_name(ep.network, ep.id) for nv in view.networks for ep in nv.local if ep.addresses
    }
    return [UnguardPort(port) for port in sorted(actual.guards) if port not in wanted]

"""Incremental ovs planning: a pass planned against a remembered observation, and what OVS
holds after flow modifications. Pure.

After a successful pass the state is known: it is what the pass planned for. So the next pass
plans against it. When the networks that changed kept their local endpoints, MTU and record --
a remote endpoint added, moved or removed, a member host joining or leaving -- only the
integration bridge's table changes, and only those networks' flows: ``plan_remote`` renders
them before and after (``flows.render_network_flows``) and returns their difference as one
``ModFlows``, the op a full plan (``controller/plan/ovs.py``) would return, at the cost of the
networks that changed. Its effect is known (``after_flows``), so nothing is read.

Anything else (a local endpoint added or removed: ports and links change) is planned by
``plan_local`` against the remembered state, which is exact after a successful pass: a new
container's port does not wait for a read of every OVSDB row, flow and link. ``plan_local`` is
``plan_ovs`` on the part of the host that belongs to the networks that changed (their ports,
links and flows; the bridges, the underlay and the fixed flows as they are; of the endpoints,
only those that changed), so a new endpoint costs the same on a host with 10 other networks as
with 1,000: they would plan to nothing. Those ops are not ``known`` (OVSDB picks ofports, the
kernel picks indexes), so the pass after them observes in full
(``controller/dataplane/incremental.py`` decides), off the container's critical path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from controller.model.flow import Flow
from controller.model.kernel_events import Sighting, agrees
from controller.model.naming import veth_host_name, veth_peer_name
from controller.model.ovs_state import OvsState
from controller.model.view import HostView, NetworkView, changed_locals, changed_networks
from controller.plan.flows import EndpointKey, fixed_flows, render_network_flows
from controller.plan.ovs import plan_ovs, vteps_to_resolve
from controller.plan.ovs_ops import ModFlows, OvsOp
from controller.plan.ovsdb import (
    FIRST_ENDPOINT_OFPORT,
    MAX_OFPORT,
    TUNNEL_OFPORT,
    OvsLayout,
    assign_ofports,
)

__all__ = ["OvsShortcut", "after_flows", "only_flow_mods", "plan_local", "plan_remote"]


Rendered = dict[str, tuple[NetworkView, tuple[int | None, ...], tuple[Flow, ...]]]
"""A memo of ``render_network_flows``: network -> (its view, its local ports, its flows)."""


def plan_remote(
    layout: OvsLayout,
    last: HostView,
    view: HostView,
    state: OvsState,
    memo: Rendered | None = None,
) -> tuple[OvsOp, ...] | None:
    """The flow changes that turn ``state`` -- OVS as the successful realisation of ``last``
    left it -- into ``view``, when only flows change (see the module docstring); ``None`` when
    anything else may (plan in full). Deterministic; pure but for ``memo``, which keeps the
    flows rendered for each network's view, so the view a pass renders as new is not rendered
    again as old by the next one (reused only for the very same view object and ports)."""
    names = changed_networks(last, view)
    if names is None or layout.bridge not in state.flows:
        return None
    before = {nv.network.name: nv for nv in last.networks if nv.network.name in names}
    after = {nv.network.name: nv for nv in view.networks if nv.network.name in names}
    if before.keys() != after.keys():
        return None
    for name, old in before.items():
        new = after[name]
        if (old.network, old.mtu, old.local) != (new.network, new.mtu, new.local):
            return None
    if not names:
        return ()
    ofports = assign_ofports(view, state.ovsdb.bridges.get(layout.bridge))
    memo = {} if memo is None else memo
    old_flows = {f.key: f for n in sorted(names) for f in _flows(before[n], ofports, memo)}
    new_flows = {f.key: f for n in sorted(names) for f in _flows(after[n], ofports, memo)}
    add = tuple(f for k, f in new_flows.items() if old_flows.get(k) != f)
    delete = tuple(sorted(f for k, f in old_flows.items() if k not in new_flows))
    return (ModFlows(layout.bridge, add, delete),) if add or delete else ()


def plan_local(
    layout: OvsLayout,
    last: HostView,
    view: HostView,
    state: OvsState,
    memo: Rendered | None = None,
) -> tuple[OvsOp, ...] | None:
    """The ops that turn ``state`` -- OVS and the links as the successful realisation of
    ``last`` left them -- into ``view``, planning only the networks that changed (see the
    module docstring); ``None`` (plan in full) when the host changed, when the integration
    bridge or its table is missing (a restarted ``ovs-vswitchd``), or when the local endpoints
    could outnumber the OpenFlow ports (a freed number goes to the first endpoint without one,
    in whichever network). Equal to ``plan_ovs(layout, view, state)`` provided the host is as
    ``last`` asked (the invariant after a successful pass; drift is the full resync's job): the
    changed networks' flows are taken from ``last``'s rendering, as ``plan_remote`` takes them,
    and the other networks' endpoints are not looked at. Deterministic; pure but for ``memo``
    (as ``plan_remote``'s)."""
    names = changed_networks(last, view)
    bridge = state.ovsdb.bridges.get(layout.bridge)
    table = state.flows.get(layout.bridge)
    if names is None or bridge is None or not bridge.owned or not table:
        return None
    if sum(len(nv.local) for nv in view.networks) > MAX_OFPORT - FIRST_ENDPOINT_OFPORT - 8:
        return None
    old = tuple(nv for nv in last.networks if nv.network.name in names)
    new = tuple(nv for nv in view.networks if nv.network.name in names)
    memo = {} if memo is None else memo
    ofports = assign_ofports(HostView(last.host, old), bridge)
    # The table's part: the fixed flows and the changed networks' flows, as ``last`` had
    # them rendered (what ``plan_remote`` takes the table to hold, too).
    fixed = fixed_flows(TUNNEL_OFPORT)
    flows = set(fixed)
    for nv in old:
        flows.update(_flows(nv, ofports, memo))
    only = changed_locals(old, new)
    links = state.kernel.links
    names_of = (f(net, ep) for net, ep in only for f in (veth_host_name, veth_peer_name))
    part = replace(
        state,
        ovsdb=replace(
            state.ovsdb,
            bridges={
                **state.ovsdb.bridges,
                layout.bridge: replace(
                    bridge,
                    ports={
                        n: p
                        for n, p in bridge.ports.items()
                        if p.network is None or p.network in names
                    },
                ),
            },
        ),
        flows={**state.flows, layout.bridge: frozenset(flows)},
        kernel=replace(state.kernel, links={n: links[n] for n in names_of if n in links}),
    )
    # The new table's part, rendered here so that the memo has it as the next pass's old one.
    ofports = assign_ofports(HostView(view.host, new), part.ovsdb.bridges[layout.bridge])
    want = (*fixed, *(f for nv in new for f in _flows(nv, ofports, memo)))
    return plan_ovs(layout, HostView(view.host, new), part, only, want)


def _flows(nv: NetworkView, ofports: Mapping[EndpointKey, int], memo: Rendered) -> tuple[Flow, ...]:
    ports = tuple(ofports.get((ep.network, ep.id)) for ep in nv.local)
    got = memo.get(nv.network.name)
    if got is not None and got[0] is nv and got[1] == ports:
        return got[2]
    flows = render_network_flows(nv, ofports, TUNNEL_OFPORT)
    memo[nv.network.name] = (nv, ports, flows)
    return flows


def only_flow_mods(ops: Sequence[OvsOp]) -> bool:
    """Whether ``ops`` only modify existing flow tables (no bridge, port, link or table
    replacement). Pure."""
    return all(isinstance(op, ModFlows) for op in ops)


def after_flows(state: OvsState, ops: Sequence[OvsOp]) -> OvsState:
    """``state`` once ``ops`` (``ModFlows`` only) applied without error, as a dump would report
    it: ``delete`` removed by key, ``add`` replacing any flow with its key. Pure; raises
    ``TypeError`` for any other op."""
    flows = dict(state.flows)
    for op in ops:
        if not isinstance(op, ModFlows):
            raise TypeError(f"not a flow modification: {op!r}")
        gone = {f.key for f in op.delete} | {f.key for f in op.add}
        kept = {f for f in flows.get(op.bridge, frozenset()) if f.key not in gone}
        flows[op.bridge] = frozenset(kept | set(op.add))
    return replace(state, flows=flows)


@dataclass(frozen=True, slots=True)
class OvsShortcut:
    """The ovs backend's incremental planning, as ``controller/dataplane/incremental.py``
    drives it: ``plan_remote``, flow modifications as the known ops, and kernel announcements
    compared with the links and entries it holds."""

    layout: OvsLayout
    rendered: Rendered = field(default_factory=dict, compare=False, repr=False)

    def plan(self, last: HostView, view: HostView, state: OvsState) -> tuple[OvsOp, ...]:
        """``plan_remote`` when only flows change, else ``plan_local`` (a local endpoint), else
        (a member VTEP to resolve first, or the host changed) ``plan_ovs``, all on the
        remembered state; never ``None``."""
        if len(self.rendered) > 4 * len(view.networks) + 16:  # networks gone: start afresh
            self.rendered.clear()
        if vteps_to_resolve(self.layout, view, state):  # a new member VTEP
            return plan_ovs(self.layout, view, state)
        ops = plan_remote(self.layout, last, view, state, self.rendered)
        if ops is None:
            ops = plan_local(self.layout, last, view, state, self.rendered)
        return plan_ovs(self.layout, view, state) if ops is None else ops

    def known(self, ops: Sequence[OvsOp]) -> bool:
        return only_flow_mods(ops)

    def after(self, state: OvsState, ops: Sequence[OvsOp]) -> OvsState:
        return after_flows(state, ops)

    def agrees(self, state: OvsState, seen: Sighting) -> bool:
        return agrees(state.kernel, seen)

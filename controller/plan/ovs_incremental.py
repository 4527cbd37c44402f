"""Incremental ovs planning: a pass planned against a remembered observation, and what OVS
holds after flow modifications. Pure.

The ovs planner (``controller/plan/ovs.py``) works on an in-memory ``OvsState``; what costs is
reading that state (an ``ovs-ofctl`` dump per bridge, a link dump, the endpoint namespaces).
After a successful pass the state is known: it is what the pass planned for. So the next pass
plans against it, and when the result is made of ``ModFlows`` alone -- a remote endpoint added,
moved or removed, a member host joining or leaving: only the integration bridge's table
changes -- the effect of those ops is known too (``after_flows``) and nothing is read.
Anything else (ports, links, a table replaced) is left to a full observation
(``controller/dataplane/incremental.py`` decides).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from controller.model.kernel_events import Sighting, agrees
from controller.model.ovs_state import OvsState
from controller.model.view import HostView
from controller.plan.ovs import plan_ovs
from controller.plan.ovs_ops import ModFlows, OvsOp
from controller.plan.ovsdb import OvsLayout

__all__ = ["OvsShortcut", "after_flows", "only_flow_mods"]


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
    drives it: the full (pure) plan against the remembered state, flow modifications as the
    known ops, and kernel announcements compared with the links and entries it holds."""

    layout: OvsLayout

    def plan(self, last: HostView, view: HostView, state: OvsState) -> tuple[OvsOp, ...] | None:
        return plan_ovs(self.layout, view, state)

    def known(self, ops: Sequence[OvsOp]) -> bool:
        return only_flow_mods(ops)

    def after(self, state: OvsState, ops: Sequence[OvsOp]) -> OvsState:
        return after_flows(state, ops)

    def agrees(self, state: OvsState, seen: Sighting) -> bool:
        return agrees(state.kernel, seen)

"""Incremental kernel planning: re-plan only the networks that changed, from a remembered
observation, and predict what the kernel holds after entry ops. Pure.

A pass that follows a successful one already has the kernel equal to the last realised view
(the backend invariant). When the new view differs from it only in some networks, planning
those networks against the remembered state gives the same ops as a full plan would -- the
other networks plan to nothing -- at a fraction of the cost; within them, only the local
endpoints that changed get their veths, guards and sides planned (``changed_locals``), so a new
endpoint does not re-check its neighbours'. ``plan_incremental`` does that;
``controller/dataplane/incremental.py`` decides when it may be used, and falls back to a full
observation whenever the result is not made of *entry ops* alone.

Entry ops (FDB, neighbour and static bridge entries, and the filters' ``SyncFilters``) are the
ops whose effect on the observed state is fully known in advance: ``after_entries`` applies
them to a ``KernelState`` exactly as the next observation would report them. Link ops are not
(the kernel assigns indexes and MACs), so a pass that changes links observes afresh.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from controller.model.kernel_events import Sighting, agrees
from controller.model.kernel_state import FdbEntry, KernelState, NeighEntry, PortFdbEntry
from controller.model.naming import bridge_name, veth_host_name, veth_peer_name, vxlan_name
from controller.model.view import HostView, NetworkView, changed_locals, changed_networks
from controller.plan.filters import plan_filters
from controller.plan.kernel import gateways_of, plan_kernel
from controller.plan.kernel_ops import (
    ZERO_MAC,
    AddFlood,
    DelFdb,
    DelNeigh,
    DelPortFdb,
    KernelOp,
    PutFdb,
    PutNeigh,
    PutPortFdb,
    SyncFilters,
    only_entries,
)

__all__ = [
    "KernelShortcut",
    "after_entries",
    "only_entries",
    "plan_incremental",
]

V = TypeVar("V")


def _restrict(
    state: KernelState, nvs: Iterable[NetworkView], only: Collection[tuple[str, str]]
) -> KernelState:
    """The part of ``state`` that belongs to the networks ``nvs`` (links by name, the entries
    of their devices, their ports' guards) and of their local endpoints to ``only`` (veths,
    sides), without table ``inet heddle``."""
    nvs = list(nvs)
    links: set[str] = set()
    sides: set[tuple[str, str]] = set()
    for nv in nvs:
        links |= {bridge_name(nv.network.vni), vxlan_name(nv.network.vni)}
        for ep in nv.local:
            if (ep.network, ep.id) in only:
                links |= {veth_host_name(ep.network, ep.id), veth_peer_name(ep.network, ep.id)}
                if ep.netns is not None:
                    sides.add((ep.netns, ep.ifname))

    return KernelState(
        links=_pick(state.links, links),
        fdb=_pick(state.fdb, links),
        neigh=_pick(state.neigh, links),
        port_fdb=_pick(state.port_fdb, links),
        endpoints={k: v for k, v in state.endpoints.items() if k in sides},
        bridge_addresses=_pick(state.bridge_addresses, links),
        forwarding=state.forwarding,
        guards=_pick(state.guards, links),
    )


def _pick(m: Mapping[str, V], names: set[str]) -> dict[str, V]:
    return {k: v for k, v in m.items() if k in names}


def plan_incremental(
    last: HostView, view: HostView, state: KernelState, filters: bool = True
) -> tuple[KernelOp, ...] | None:
    """The ops that turn ``state`` -- the kernel as the successful realisation of ``last``
    left it -- into ``view``, planning only the networks that changed; ``None`` when the
    host changed (plan in full). Equal to ``plan_kernel(view, state)`` up to the order of
    independent ops, provided the unchanged networks and local endpoints are as ``last`` asked
    (the invariant after a successful pass, drift aside: drift is the full resync's job).
    Deterministic."""
    names = changed_networks(last, view)
    if names is None:
        return None
    gateways = gateways_of(view)
    if gateways != gateways_of(last):  # egress moved between networks: plan the host
        return None
    if not names:
        first, late = plan_filters(view, state, gateways) if filters else ([], [])
        return (*first, *late)
    old = [nv for nv in last.networks if nv.network.name in names]
    new = tuple(nv for nv in view.networks if nv.network.name in names)
    only = changed_locals(old, new)
    part = _restrict(state, (*old, *new), only)
    ops = plan_kernel(
        HostView(view.host, new), part, filters=False, gateways=gateways, guards=filters,
        only=only,
    )  # fmt: skip
    first, late = plan_filters(view, state, gateways) if filters else ([], [])
    return (*first, *ops, *late)


def after_entries(state: KernelState, ops: Iterable[KernelOp]) -> KernelState:
    """``state`` once ``ops`` (entry ops only; ``only_entries``) applied without error, as an
    observation would report it. Pure; raises ``TypeError`` for any other op.

    The kernel's semantics (``docs/platform.md`` K4): a unicast FDB replace rewrites the
    MAC's one destination, a flood entry is appended, a neighbour replace rewrites the
    address's entry, a static bridge entry replace moves the MAC to its port within the
    port's bridge; deletes remove exactly what they name."""
    fdb = {k: set(v) for k, v in state.fdb.items()}
    neigh = {k: set(v) for k, v in state.neigh.items()}
    ports = {k: set(v) for k, v in state.port_fdb.items()}
    filters, filter_vnis = state.filters, state.filter_vnis
    for op in ops:
        match op:
            case PutFdb():
                got = fdb.setdefault(op.dev, set())
                got -= {e for e in got if e.mac == op.mac}
                got.add(FdbEntry(op.mac, op.dst))
            case AddFlood():
                fdb.setdefault(op.dev, set()).add(FdbEntry(ZERO_MAC, op.dst))
            case DelFdb():
                fdb.get(op.dev, set()).discard(FdbEntry(op.mac, op.dst))
            case PutNeigh():
                got_n = neigh.setdefault(op.dev, set())
                got_n -= {e for e in got_n if e.ip == op.ip}
                got_n.add(NeighEntry(op.ip, op.mac, True))
            case DelNeigh():
                got_n = neigh.get(op.dev, set())
                got_n -= {e for e in got_n if e.ip == op.ip}
            case PutPortFdb() | DelPortFdb():
                link = state.links.get(op.dev)
                bridge = link.master if link is not None else None
                if bridge is None:
                    continue
                got_p = ports.setdefault(bridge, set())
                if isinstance(op, PutPortFdb):  # one entry per MAC in a bridge: it moves here
                    got_p -= {e for e in got_p if e.mac == op.mac}
                    got_p.add(PortFdbEntry(op.mac, op.dev))
                else:
                    got_p.discard(PortFdbEntry(op.mac, op.dev))
            case SyncFilters():
                filters, filter_vnis = op.spec, ()
            case _:
                raise TypeError(f"not an entry op: {op!r}")
    return replace(
        state,
        fdb={k: frozenset(v) for k, v in fdb.items()},
        neigh={k: frozenset(v) for k, v in neigh.items()},
        port_fdb={k: frozenset(v) for k, v in ports.items()},
        filters=filters,
        filter_vnis=filter_vnis,
    )


@dataclass(frozen=True, slots=True)
class KernelShortcut:
    """The kernel backend's incremental planning, as ``controller/dataplane/incremental.py``
    drives it: ``plan_incremental``, entry ops as the known ones, ``after_entries``, and kernel
    announcements compared with the state itself. ``filters``: as the driver's. Pure."""

    filters: bool = True

    def plan(
        self, last: HostView, view: HostView, state: KernelState
    ) -> tuple[KernelOp, ...] | None:
        return plan_incremental(last, view, state, self.filters)

    def known(self, ops: Sequence[KernelOp]) -> bool:
        return only_entries(ops)

    def after(self, state: KernelState, ops: Sequence[KernelOp]) -> KernelState:
        return after_entries(state, ops)

    def agrees(self, state: KernelState, seen: Sighting) -> bool:
        return agrees(state, seen)

"""``IncrementalKernel``: event-driven passes without a kernel dump, for the kernel backend.

Wraps a kernel ``DataPlane`` (``KernelDataPlane``, or ``FakeKernel`` in tests) and keeps, after
each successful pass, the observed state as that pass left it together with the view it
realised. The next pass then:

1. plans only the networks whose part of the view changed, against the remembered state
   (``controller/plan/kernel_incremental.py``: ``plan_incremental``);
2. if those ops are all *entry ops* (FDB, neighbour and static bridge entries, the filters'
   ``SyncFilters``) -- a remote endpoint added, moved or removed, a member host joining or
   leaving -- they are the pass: ``observe`` returns the remembered state without reading the
   kernel, ``plan`` returns those ops, and ``apply`` moves the remembered state on by their
   known effect (``after_entries``);
3. otherwise (a local endpoint, a new network, an MTU: links change) the pass observes and
   plans in full, as without this wrapper; so does any pass after a failed apply, any pass the
   reconciler asks to start afresh (``forget``: its first pass, its periodic resync that
   repairs drift, a retry), and any pass once the remembered observation is older than
   ``ttl`` (a safety net; the agent sets it above its resync interval).

The invariant holds as before: after any pass that raised nothing, a full observation planned
against the view yields no ops (held by property tests over random change sequences on
``FakeKernel`` and by a randomized test on the real kernel). What is given up: drift made by
someone else between two full observations is repaired by the next full one rather than by the
next event-driven pass -- as ``KernelDataPlane`` already does for endpoint namespaces and its
nftables tables. Not thread-safe, like every driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from controller.dataplane.backend import DataPlane
from controller.diag.facts import NetworkFacts
from controller.model.kernel_state import KernelState
from controller.model.view import HostView
from controller.plan.kernel_incremental import after_entries, only_entries, plan_incremental
from controller.plan.kernel_ops import KernelOp


class IncrementalKernel:
    """See the module docstring. ``ttl`` 0 turns the incremental path off (every pass full).
    ``clock``: monotonic seconds (tests pass their own)."""

    def __init__(
        self,
        inner: DataPlane[KernelState, KernelOp],
        ttl: float,
        *,
        filters: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.ttl = ttl
        self.filters = filters
        self._clock = clock
        # (the state after the last successful pass, the view it realised, when observed)
        self._kept: tuple[KernelState, HostView, float] | None = None
        # what this pass planned from: (view, state, ops or None for a full plan, observed at)
        self._pass: tuple[HostView, KernelState, tuple[KernelOp, ...] | None, float] | None = None
        self.incremental_passes = 0
        self.full_passes = 0
        self.observed_in_full = True

    # -- observe / plan -----------------------------------------------------------------------
    def observe(self, view: HostView) -> KernelState:
        """The remembered state when this pass can be planned incrementally with entry ops
        only; else a full observation. Raises what the inner driver raises."""
        now = self._clock()
        kept = self._kept
        if kept is not None and now - kept[2] < self.ttl:
            state, last, at = kept
            ops = plan_incremental(last, view, state, self.filters)
            if ops is not None and only_entries(ops):
                self._pass = (view, state, ops, at)
                self.observed_in_full = False
                return state
        state = self.inner.observe(view)
        self._pass = (view, state, None, now)
        self.observed_in_full = True
        return state

    def forget(self) -> None:
        """The next ``observe`` reads the kernel (a resync, a retry, the first pass)."""
        self._kept = self._pass = None
        self.inner.forget()

    def plan(self, view: HostView, actual: KernelState) -> tuple[KernelOp, ...]:
        """The incremental ops when ``actual`` is what ``observe`` returned for ``view`` on
        the incremental path; else the inner driver's full plan. Deterministic. A plan with no
        ops is a converged pass (no ``apply`` follows): its state and view are remembered."""
        p = self._pass
        mine = p is not None and p[0] is view and p[1] is actual
        ops = p[2] if p is not None and mine and p[2] is not None else None
        if ops is None:
            ops = self.inner.plan(view, actual)
        if not ops and p is not None and mine:  # converged: no apply follows, remember now
            self._kept, self._pass = (actual, view, p[3]), None
        return ops

    # -- apply --------------------------------------------------------------------------------
    def apply(
        self, ops: Sequence[KernelOp], progress: Callable[[KernelOp], None] | None = None
    ) -> None:
        """Apply through the inner driver; then remember the state these ops lead to (entry
        ops only) or forget it (links changed, or anything failed: observe in full next)."""
        p, self._pass, self._kept = self._pass, None, None
        self.inner.apply(ops, progress)
        if p is None or not only_entries(ops):
            return
        view, state, incremental, at = p
        self._kept = (after_entries(state, ops), view, at)
        if incremental is not None:
            self.incremental_passes += 1
        else:
            self.full_passes += 1

    # -- the rest: the inner driver's ---------------------------------------------------------
    def inventory(self, view: HostView, actual: KernelState) -> Mapping[str, int]:
        return self.inner.inventory(view, actual)

    def facts(self, view: HostView, network: str, actual: KernelState) -> NetworkFacts | None:
        return self.inner.facts(view, network, actual)

    def drops(self) -> Mapping[str, int]:
        return self.inner.drops()

    def close(self) -> None:
        self._kept = self._pass = None
        self.inner.close()

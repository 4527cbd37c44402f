"""``Incremental``: event-driven passes without reading the data plane, for either backend.

Wraps a ``DataPlane`` (``KernelDataPlane`` or ``OvsDataPlane``, or their fakes in tests) and
keeps, after each successful pass, the observed state as that pass left it together with the
view it realised. The next pass then asks the backend's ``Shortcut`` (pure, in ``plan/``):

1. ``plan``: the ops that turn the remembered state into the new view, planned only where the
   view changed (``controller/plan/kernel_incremental.py``, ``controller/plan/ovs_incremental.py``);
2. whenever ``plan`` answers, those ops are the pass: ``observe`` returns the remembered state
   without reading anything and ``plan`` returns them;
3. ``known``: whether their effect on the state is known in advance -- the kernel's FDB,
   neighbour and static bridge entries and its filters, OVS's flow modifications: a remote
   endpoint added, moved or removed, a member host joining or leaving. Then ``apply`` moves
   the remembered state on by their effect (``after``). Otherwise (a local endpoint, a new
   network: links change, and the kernel picks their indexes and MACs) ``apply`` forgets it
   and the next pass observes in full -- after the change is made, off its critical path
   (a container's interface no longer waits for a read of every link and namespace);
4. when ``plan`` says only a full plan can tell (the kernel: the host's own record changed),
   the pass observes and plans in full, as without this wrapper.

What is remembered is also kept true by notifications: ``notice`` takes what the kernel
announced (``controller/dataplane/kernel_events.py``; called from the listener's thread) and
drops the remembered state -- and calls ``on_drift``, the reconciler's wake-up -- as soon as an
announcement disagrees with it, i.e. someone else changed a link or an entry. ``still`` (ovs:
the OVSDB IDL, which receives OVSDB's own notifications) is asked before every remembered pass.
A pass observes in full after any failed apply, when the reconciler asks (``forget``: its first
pass, its periodic resync, a retry, a wake-up for the data plane), when announcements were lost,
and once the remembered observation is older than ``ttl`` (a safety net above the resync).

The invariant holds as before: after any pass that raised nothing, a full observation planned
against the view yields no ops (held by property tests over random change sequences on both
fakes, and by randomized tests on the real kernel and a real OVS). Only ``notice`` may be called
from another thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

from controller.dataplane.backend import DataPlane
from controller.diag.facts import NetworkFacts
from controller.model.kernel_events import Sighting, last_sightings
from controller.model.view import HostView

log = logging.getLogger("heddle.incremental")

_PENDING_MAX = 100_000

S = TypeVar("S")
Op = TypeVar("Op")


class Shortcut(Protocol[S, Op]):
    """A backend's incremental planning. Every method is pure and deterministic."""

    def plan(self, last: HostView, view: HostView, state: S) -> tuple[Op, ...] | None:
        """The ops turning ``state`` (the data plane as the realisation of ``last`` left it)
        into ``view``, or ``None`` when only a full plan can tell."""
        ...

    def known(self, ops: Sequence[Op]) -> bool:
        """Whether ``after`` can predict the effect of ``ops`` exactly."""
        ...

    def after(self, state: S, ops: Sequence[Op]) -> S:
        """``state`` once ``ops`` (``known``) applied without error, as an observation would
        report it. Raises ``TypeError`` for ops that are not ``known``."""
        ...

    def agrees(self, state: S, seen: Sighting) -> bool:
        """Whether ``state`` already says what a kernel announcement says."""
        ...


class Listening(Protocol):
    """A running listener for announcements (``KernelEvents``)."""

    def sync(self, timeout: float = 1.0) -> bool:
        """Return once everything announced before the call was passed on."""
        ...

    def hold(self) -> None:
        """Read but do not pass on announcements until ``release`` (nothing lost)."""
        ...

    def release(self) -> None:
        """Pass on what was held, in order."""
        ...

    def stop(self) -> None: ...


Notice = Callable[[Sequence[Sighting] | None], None]


class Incremental(Generic[S, Op]):
    """See the module docstring. ``ttl`` 0 turns the incremental path off (every pass full).
    ``still(state)``: False when a cheap check finds the remembered state out of date.
    ``on_drift``: called (from the notifying thread) when an announcement disagreed.
    ``listen(notice, wanted)``: starts a listener that calls ``notice`` (and may skip decoding
    entry announcements while ``wanted()`` is False -- nothing remembered, nothing collected:
    a pass that builds thousands of entries does not pay for decoding their echo); started
    before the first full observation (so nothing between the two is missed), retried before
    each full observation while it fails (``OSError``; meanwhile drift waits for the resync),
    stopped by ``close``.
    ``clock``: monotonic seconds (tests pass their own)."""

    def __init__(
        self,
        inner: DataPlane[S, Op],
        shortcut: Shortcut[S, Op],
        ttl: float,
        *,
        still: Callable[[S], bool] | None = None,
        on_drift: Callable[[], None] | None = None,
        listen: Callable[[Notice, Callable[[], bool]], Listening] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.shortcut = shortcut
        self.ttl = ttl
        self.still = still
        self.on_drift = on_drift
        self._clock = clock
        self._listen = listen
        self._listening: Listening | None = None
        self._lock = threading.Lock()  # guards _kept, _collecting and _pending against notice()
        # (the state after the last successful pass, the view it realised, when observed)
        self._kept: tuple[S, HostView, float] | None = None
        self._collecting = False
        self._pending: list[Sighting | None] = []  # announced while a pass observed or applied
        # what this pass planned from: (view, state, ops or None for a full plan, observed at)
        self._pass: tuple[HostView, S, tuple[Op, ...] | None, float] | None = None
        self.incremental_passes = 0
        self.full_passes = 0
        self.drifts = 0  # remembered states dropped because an announcement disagreed
        self.observed_in_full = True

    # -- notifications (any thread) -----------------------------------------------------------
    def wanted(self) -> bool:
        """Whether announcements can matter now: something is remembered, or a pass collects
        them to check against what it will remember. A hint (read without the lock): a stale
        answer costs a decode or skips one that nothing would have been checked against."""
        return self._kept is not None or self._collecting

    def notice(self, seen: Sequence[Sighting] | None) -> None:
        """What the data plane announced (``None``: announcements were lost). Drops the
        remembered state and calls ``on_drift`` if any of it disagrees. Thread-safe."""
        with self._lock:
            if self._collecting:
                self._pending.extend(seen if seen is not None else [None])
                if len(self._pending) > _PENDING_MAX:  # forgetting is cheaper than keeping
                    self._pending = [None]
                return
            drifted = self._check(list(seen) if seen is not None else [None])
        if drifted and self.on_drift is not None:
            self.on_drift()

    def _check(self, seen: list[Sighting | None]) -> bool:
        """Under the lock: drop the remembered state if ``seen`` disagrees with it."""
        kept = self._kept
        if kept is None or not seen:
            return False
        state = kept[0]
        odd = next((s for s in seen if s is None or not self.shortcut.agrees(state, s)), False)
        if odd is False:
            return False
        self._kept = None
        self.drifts += 1
        log.info("the data plane changed under the agent (%s): the next pass reads it afresh",
                 "announcements lost" if odd is None else odd)  # fmt: skip
        return True

    # -- observe / plan -----------------------------------------------------------------------
    def observe(self, view: HostView) -> S:
        """The remembered state when this pass can be planned incrementally; else a full
        observation. Raises what the inner driver raises."""
        now = self._clock()
        with self._lock:
            kept = self._kept
        if kept is not None and now - kept[2] < self.ttl:
            state, last, at = kept
            if self.still is None or self.still(state):
                ops = self.shortcut.plan(last, view, state)
                if ops is not None:
                    self._pass = (view, state, ops, at)
                    self.observed_in_full = False
                    return state
        self._start_listening()
        self._sync()  # what was announced before this observation is older than it
        with self._lock:  # ... and what comes from now on is checked once the pass is done
            self._kept, self._collecting, self._pending = None, True, []
        try:
            state = self.inner.observe(view)
        except BaseException:
            self._stop_collecting()
            raise
        self._pass = (view, state, None, now)
        self.observed_in_full = True
        return state

    @property
    def settled(self) -> bool:
        """Whether an observation is remembered (``DataPlane.settled``)."""
        with self._lock:
            return self._kept is not None

    def _start_listening(self) -> None:
        if self._listen is None or self._listening is not None:
            return
        try:
            self._listening = self._listen(self.notice, self.wanted)
        except OSError as exc:
            log.warning("not listening to data-plane announcements (drift waits for the "
                        "resync): %s", exc)  # fmt: skip

    def _stop_collecting(self) -> None:
        with self._lock:
            self._collecting, self._pending = False, []

    def _sync(self) -> None:
        if self._listening is not None:
            self._listening.sync()

    def forget(self) -> None:
        """The next ``observe`` reads the data plane (a resync, a retry, the first pass)."""
        with self._lock:
            self._kept, self._collecting, self._pending = None, False, []
        self._pass = None
        self.inner.forget()

    def plan(self, view: HostView, actual: S) -> tuple[Op, ...]:
        """The incremental ops when ``actual`` is what ``observe`` returned for ``view`` on
        the incremental path; else the inner driver's full plan. Deterministic. A plan with no
        ops is a converged pass (no ``apply`` follows): its state and view are remembered."""
        p = self._pass
        mine = p is not None and p[0] is view and p[1] is actual
        ops = p[2] if p is not None and mine and p[2] is not None else None
        if ops is None:
            ops = tuple(self.inner.plan(view, actual))
        if not ops and p is not None and mine:  # converged: no apply follows, remember now
            self._remember((actual, view, p[3]))
            self._pass = None
        return ops

    def _remember(self, kept: tuple[S, HostView, float] | None) -> None:
        """Remember ``kept``, then check what was announced while this pass ran against it."""
        with self._lock:
            self._kept, self._collecting = kept, False
            pending, self._pending = self._pending, []
            drifted = self._check(_last(pending))
        if drifted and self.on_drift is not None:
            self.on_drift()

    # -- apply --------------------------------------------------------------------------------
    def apply(self, ops: Sequence[Op], progress: Callable[[Op], None] | None = None) -> None:
        """Apply through the inner driver; then remember the state these ops lead to (``known``
        ops only) or forget it (links changed, or anything failed: observe in full next).
        Announcements that came meanwhile are checked against what is then remembered."""
        p, self._pass = self._pass, None
        known = p is not None and self.shortcut.known(ops)
        with self._lock:
            if not known:  # nothing will be remembered: nothing to check, nothing to collect
                self._collecting, self._pending = False, []
            elif not self._collecting:  # an incremental pass: collect from here
                self._collecting, self._pending = True, []
            self._kept = None
        kept: tuple[S, HostView, float] | None = None
        listening = self._listening
        try:
            if listening is not None:  # the apply's own echo is decoded after it, not during
                listening.hold()
            try:
                self.inner.apply(ops, progress)
            finally:
                if listening is not None:
                    listening.release()
            self._sync()  # this apply's own announcements are in _pending now
            if p is not None and known:
                view, state, incremental, at = p
                kept = (self.shortcut.after(state, ops), view, at)
                if incremental is not None:
                    self.incremental_passes += 1
                else:
                    self.full_passes += 1
        finally:
            self._remember(kept)

    # -- the rest: the inner driver's ---------------------------------------------------------
    def inventory(self, view: HostView, actual: S) -> Mapping[str, int]:
        return self.inner.inventory(view, actual)

    def facts(self, view: HostView, network: str, actual: S) -> NetworkFacts | None:
        return self.inner.facts(view, network, actual)

    def drops(self) -> Mapping[str, int]:
        return self.inner.drops()

    def close(self) -> None:
        if self._listening is not None:
            self._listening.stop()
            self._listening = None
        with self._lock:
            self._kept = None
        self._pass = None
        self.inner.close()


def _last(seen: list[Sighting | None]) -> list[Sighting | None]:
    """The last sighting of each object; one ``None`` (lost announcements) if any."""
    if any(s is None for s in seen):
        return [None]
    return list(last_sightings(s for s in seen if s is not None))

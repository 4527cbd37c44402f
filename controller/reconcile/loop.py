"""One reconcile pass and the loop that schedules passes.

A pass: take an immutable snapshot → reduce it to this host's view → observe the owned objects
→ plan (pure) → apply. The loop runs a pass when woken, and on a jittered periodic resync that
repairs drift; a failing pass is retried with jittered exponential backoff, never in a spin.

A pass woken only by desired-state changes (``Wake.DESIRED``) whose host view equals the view
the last successful pass realised stops after the view: the data plane already matches it
(the invariant of a successful apply), and drift is the resync's job. So a change elsewhere in
the cluster -- or a hostile writer's stream of invalid records -- costs this host a view
computation, not a dump of the kernel or OVS. Its problems are still reported.

Every pass has an id (1, 2, ...) and a trigger: ``start`` (the first), ``event`` (woken by the
watcher or the data plane), ``resync`` (the periodic timer), ``retry`` (the backoff after a
failed pass) or ``verify``: right after a pass that changed the data plane in a way the driver
cannot predict (links, ports), a pass that reads it afresh -- it confirms the change and leaves
the driver *settled* (``DataPlane.settled``), so the next remote change is planned against
what it remembers instead of waiting for a full read. Each logs one line with its trigger, its
duration, changes and errors (``heddle.pass``).
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from controller.dataplane.announce import Announcing, Sent
from controller.dataplane.backend import DataPlane, DataPlaneError
from controller.model.errors import HeddleError, clip
from controller.model.records import Host
from controller.model.view import HostView, Snapshot, ViewMemo, host_view
from controller.plan.announce import plan_announcements
from controller.reconcile.trigger import Trigger, Wake

log = logging.getLogger("heddle.reconcile")
pass_log = logging.getLogger("heddle.pass")
PASS_LINE = re.compile(
    r"pass id=(?P<id>\d+) trigger=(?P<trigger>\w+) revision=(?P<revision>\d+) "
    r"changes=(?P<changes>\d+) errors=(?P<errors>\d+) ok=(?P<ok>True|False) "
    r"duration_ms=(?P<duration_ms>[\d.]+)"
)
"""Parses the text form of the per-pass log line (for the lab's checks and the benchmarks)."""
TRIGGERS = ("start", "event", "resync", "retry", "verify", "manual")

S = TypeVar("S")
O = TypeVar("O")  # noqa: E741


@dataclass(frozen=True, slots=True)
class ViewStats:
    """The size of a host view: what the metrics report as local endpoints, networks, peers."""

    networks: int
    local_endpoints: int
    peers: int


def view_stats(view: HostView) -> ViewStats:
    """Pure."""
    return ViewStats(
        len(view.networks),
        sum(len(nv.local) for nv in view.networks),
        len({v for nv in view.networks for v in nv.flood}),
    )


@dataclass(frozen=True, slots=True)
class PassResult:
    """Outcome of one pass: the revision realised, ops applied, and what went wrong.

    ``observed``: the data plane was read (False: the view was unchanged, see the module
    docstring). ``op_counts``: ops planned (applied unless ``ok`` is False), per op type.
    ``error_kinds``: one entry per failed op (its type) or the exception type of a pass that
    failed otherwise. ``inventory``: owned objects by kind after a clean full pass, else None.
    ``waited``: seconds from the event that woke the pass to its start (None: not woken by
    one). ``stages``: seconds from the pass's start at which it had observed, planned, and
    done with the last op of each type (in the order they finished): the critical path of a
    change, as the convergence bench breaks it down. ``remembered``: the pass planned against
    an observation the driver remembered (an incremental pass) instead of reading the data
    plane. ``announced``: what the neighbour announcements after the apply did
    (``controller/plan/announce.py``; None: none were due).
    """

    revision: int
    started: float
    duration: float
    changes: int
    ok: bool
    error: str | None
    problems: tuple[str, ...]
    ops: tuple[str, ...] = ()
    pass_id: int = 0
    trigger: str = "manual"
    observed: bool = True
    op_counts: tuple[tuple[str, int], ...] = ()
    error_kinds: tuple[str, ...] = ()
    stats: ViewStats | None = None
    inventory: Mapping[str, int] | None = None
    waited: float | None = None
    stages: tuple[tuple[str, float], ...] = ()
    remembered: bool = False
    announced: Sent | None = None


def _same_plane(a: HostView, b: HostView) -> bool:
    """Whether two views ask the data plane for the same thing (their problems may differ)."""
    return a.host == b.host and a.networks == b.networks


class Reconciler(Generic[S, O]):
    """Drives passes for one host. ``run_pass`` is callable directly (tests, ``--once``)."""

    def __init__(
        self,
        host: Host,
        snapshot: Callable[[], Snapshot],
        driver: DataPlane[S, O],
        trigger: Trigger,
        on_result: Callable[[PassResult], None] = lambda r: None,
        resync_interval: float = 30.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        link_local_vteps: bool = False,
        announcer: Announcing | None = None,
    ) -> None:
        self._host = host
        self._snapshot = snapshot
        self._driver = driver
        self._trigger = trigger
        self._on_result = on_result
        self._resync = resync_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._link_local_vteps = link_local_vteps
        self._announcer = announcer
        self._stop = threading.Event()
        self._pass_id = 0
        self.passes = 0
        self.failures = 0
        self.last: PassResult | None = None
        self._reported: frozenset[str] = frozenset()
        self._realised: HostView | None = None  # the view the last successful pass realised
        self._last_ok: HostView | None = None  # the same, kept across failed passes
        self._view_memo = ViewMemo()  # unchanged networks' views are not rebuilt
        self.skipped_passes = 0
        self.view: HostView | None = None  # the view of the latest pass (read by diagnostics)
        self.first_ok = threading.Event()  # set once a full pass succeeded

    def run_pass(
        self,
        full: bool = True,
        trigger: str = "manual",
        woken_at: float | None = None,
        afresh: bool = False,
    ) -> PassResult:
        """Realise the current snapshot once. Never raises: failures are in the result.

        ``full=False``: skip the data plane if the view equals the last realised one.
        ``trigger``: what started the pass (one of ``TRIGGERS``; for the log and the metrics).
        ``woken_at``: monotonic time of the event that woke it (``PassResult.waited``).
        ``afresh``: read the data plane even on an event (woken because it changed under us:
        an ovs-vswitchd restart, a kernel change made by someone else); every trigger but
        ``event`` reads it anyway."""
        started = time.time()
        t0 = time.perf_counter()
        waited = None if woken_at is None else max(0.0, time.monotonic() - woken_at)
        self._pass_id += 1
        marks: dict[str, float] = {}

        def mark(name: str) -> None:
            marks.pop(name, None)  # re-inserted: the order is the order stages finished
            marks[name] = time.perf_counter() - t0

        snap = self._snapshot()
        mark("snapshot")
        view = host_view(
            snap, self._host, link_local_vteps=self._link_local_vteps, memo=self._view_memo
        )
        mark("view")
        self.view = view
        stats = view_stats(view)
        problems = tuple(snap.skipped) + view.problems
        self._report(problems)
        if not full and self._realised is not None and _same_plane(view, self._realised):
            self.skipped_passes += 1
            result = PassResult(snap.revision, started, time.perf_counter() - t0, 0, True, None,
                                problems, pass_id=self._pass_id, trigger=trigger, observed=False,
                                stats=stats, waited=waited)  # fmt: skip
            self._finish(result, ())
            return result
        applied: tuple[str, ...] = ()
        kinds: Counter[str] = Counter()
        self._realised = None
        remembered = False
        try:
            if afresh or trigger != "event":  # start, resync, retry, manual: read it afresh
                self._driver.forget()
            actual = self._driver.observe(view)
            remembered = not self._driver.observed_in_full
            mark("observe")
            ops = tuple(self._driver.plan(view, actual))
            mark("plan")
            applied = tuple(str(op) for op in ops)
            kinds.update(type(op).__name__ for op in ops)
            if ops:
                self._driver.apply(ops, lambda op: mark(type(op).__name__))
            announced = self._announce(view)
            if announced is not None:
                mark("Announce")
            result = PassResult(
                snap.revision, started, time.perf_counter() - t0, len(ops), True, None, problems,
                applied, self._pass_id, trigger, True, tuple(sorted(kinds.items())), (), stats,
                self._driver.inventory(view, actual), waited, tuple(marks.items()), remembered,
                announced,
            )  # fmt: skip
            self._realised = self._last_ok = view
            self.first_ok.set()
        except Exception as exc:  # a pass must never kill the agent
            if isinstance(exc, HeddleError):  # expected (a missing netns, etcd down): no trace
                log.warning("pass at revision %d failed: %s", snap.revision, exc)
            else:
                log.exception("pass at revision %d failed", snap.revision)
            if isinstance(exc, DataPlaneError):
                errors = tuple(type(op).__name__ for op, _ in exc.failures)
            else:
                errors = (type(exc).__name__,)
            result = PassResult(
                snap.revision, started, time.perf_counter() - t0, len(applied), False,
                f"{type(exc).__name__}: {exc}", problems, applied, self._pass_id, trigger, True,
                tuple(sorted(kinds.items())), errors, stats, None, waited, tuple(marks.items()),
                remembered,
            )  # fmt: skip
        self.passes += 1
        self.failures += 0 if result.ok else 1
        self._finish(result, applied)
        return result

    def _announce(self, view: HostView) -> Sent | None:
        """After a successful apply: tell local endpoints about the addresses that became
        reachable since the last successful pass (``controller/plan/announce.py``). Never
        raises; None when nothing was due."""
        if self._announcer is None:
            return None
        due = plan_announcements(self._last_ok, view)
        if not due:
            return None
        sent = self._announcer.send(due)
        if sent.failed:
            log.warning("%d of %d announcements not sent: %s", sent.failed, len(due), sent.error)
        return sent

    def _finish(self, result: PassResult, applied: tuple[str, ...]) -> None:
        self.last = result
        waited = "" if result.waited is None else f" waited_ms={result.waited * 1000:.1f}"
        told = "" if result.announced is None else f" announced={result.announced.sent}"
        stages = ",".join(f"{name}:{at * 1000:.1f}" for name, at in result.stages)
        pass_log.info(
            "pass id=%d trigger=%s revision=%d changes=%d errors=%d ok=%s duration_ms=%.1f "
            "problems=%d%s%s%s%s%s",
            result.pass_id, result.trigger, result.revision, result.changes,
            len(result.error_kinds), result.ok, result.duration * 1000, len(result.problems),
            "" if result.observed else " view=unchanged",
            " observed=remembered" if result.remembered else "", waited, told,
            f" stages={stages}" if result.changes else "",
            extra={"heddle": {
                "pass_id": result.pass_id, "trigger": result.trigger,
                "revision": result.revision, "changes": result.changes,
                "errors": len(result.error_kinds), "ok": result.ok,
                "duration_ms": round(result.duration * 1000, 3),
                "problems": len(result.problems), "observed": result.observed,
                "remembered": result.remembered,
                **({} if result.waited is None
                   else {"waited_ms": round(result.waited * 1000, 3)}),
                **({} if result.announced is None
                   else {"announced": result.announced.sent}),
                **({"stages_ms": {n: round(at * 1000, 3) for n, at in result.stages}}
                   if result.changes else {}),
            }},
        )  # fmt: skip
        for op in applied:
            log.debug("  %s", op)
        self._publish(result)

    def _publish(self, result: PassResult) -> None:
        try:
            self._on_result(result)
        except Exception:
            log.exception("status callback failed")

    def _report(self, problems: tuple[str, ...]) -> None:
        """Log each problem once, when it first appears (every pass logs only the count)."""
        now = frozenset(problems)
        for p in sorted(now - self._reported):
            log.warning("skipped: %s", clip(p, 300))
        self._reported = now

    def run(self) -> None:
        """Loop until ``stop()``: pass on wake-up or resync; back off on failure."""
        delay = self._backoff_initial
        wake = Wake.FULL
        next_resync = 0.0
        trigger = "start"
        while not self._stop.is_set():
            now, skipped = time.monotonic(), self.skipped_passes
            result = self.run_pass(
                full=trigger == "verify" or wake is not Wake.DESIRED or now >= next_resync,
                trigger=trigger,
                woken_at=self._trigger.fired_at if trigger == "event" else None,
                afresh=wake is Wake.FULL,
            )
            verify = False
            if result.ok:
                delay = self._backoff_initial
                if self.skipped_passes == skipped and not result.remembered:
                    # the data plane was read: the next full resync is due an interval later
                    next_resync = now + self._resync * random.uniform(0.8, 1.2)
                verify = result.changes > 0 and not self._driver.settled
                timeout = 0.0 if verify else max(0.0, next_resync - time.monotonic())
            else:
                timeout = delay * random.uniform(0.5, 1.0)
                delay = min(delay * 2, self._backoff_max)
            wake = self._trigger.wait(timeout)
            if verify:  # reads afresh, and covers whatever woke it meanwhile
                trigger = "verify"
            elif wake is not Wake.TIMEOUT:
                trigger = "event"
            else:
                trigger = "resync" if result.ok else "retry"

    def stop(self) -> None:
        self._stop.set()
        self._trigger.fire()

"""One reconcile pass and the loop that schedules passes.

A pass: take an immutable snapshot → reduce it to this host's view → observe the owned objects
→ plan (pure) → apply. The loop runs a pass when woken, and on a jittered periodic resync that
repairs drift; a failing pass is retried with jittered exponential backoff, never in a spin.

A pass woken only by desired-state changes (``Wake.DESIRED``) whose host view equals the view
the last successful pass realised stops after the view: the data plane already matches it
(the invariant of a successful apply), and drift is the resync's job. So a change elsewhere in
the cluster -- or a hostile writer's stream of invalid records -- costs this host a view
computation, not a dump of the kernel or OVS. Its problems are still reported.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from controller.dataplane.backend import DataPlane
from controller.model.errors import HeddleError, clip
from controller.model.records import Host
from controller.model.view import HostView, Snapshot, host_view
from controller.reconcile.trigger import Trigger, Wake

log = logging.getLogger("heddle.reconcile")

S = TypeVar("S")
O = TypeVar("O")  # noqa: E741


@dataclass(frozen=True, slots=True)
class PassResult:
    """Outcome of one pass: the revision realised, ops applied, and what went wrong."""

    revision: int
    started: float
    duration: float
    changes: int
    ok: bool
    error: str | None
    problems: tuple[str, ...]
    ops: tuple[str, ...] = ()


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
        self._stop = threading.Event()
        self.passes = 0
        self.failures = 0
        self.last: PassResult | None = None
        self._reported: frozenset[str] = frozenset()
        self._realised: HostView | None = None  # the view the last successful pass realised
        self.skipped_passes = 0

    def run_pass(self, full: bool = True) -> PassResult:
        """Realise the current snapshot once. Never raises: failures are in the result.

        ``full=False``: skip the data plane if the view equals the last realised one."""
        started = time.time()
        t0 = time.perf_counter()
        snap = self._snapshot()
        view = host_view(snap, self._host, link_local_vteps=self._link_local_vteps)
        problems = tuple(snap.skipped) + view.problems
        self._report(problems)
        if not full and self._realised is not None and _same_plane(view, self._realised):
            self.skipped_passes += 1
            result = PassResult(snap.revision, started, time.perf_counter() - t0, 0, True, None,
                                problems)  # fmt: skip
            self.last = result
            log.info(
                "pass revision=%d changes=0 ok=True duration_ms=%.1f problems=%d view=unchanged",
                snap.revision,
                result.duration * 1000,
                len(problems),
            )
            self._publish(result)
            return result
        applied: tuple[str, ...] = ()
        self._realised = None
        try:
            actual = self._driver.observe(view)
            ops = tuple(self._driver.plan(view, actual))
            applied = tuple(str(op) for op in ops)
            if ops:
                self._driver.apply(ops)
            result = PassResult(
                snap.revision,
                started,
                time.perf_counter() - t0,
                len(ops),
                True,
                None,
                problems,
                applied,
            )
            self._realised = view
        except Exception as exc:  # a pass must never kill the agent
            if isinstance(exc, HeddleError):  # expected (a missing netns, etcd down): no trace
                log.warning("pass at revision %d failed: %s", snap.revision, exc)
            else:
                log.exception("pass at revision %d failed", snap.revision)
            result = PassResult(
                snap.revision,
                started,
                time.perf_counter() - t0,
                len(applied),
                False,
                f"{type(exc).__name__}: {exc}",
                problems,
                applied,
            )
        self.passes += 1
        self.failures += 0 if result.ok else 1
        self.last = result
        log.info(
            "pass revision=%d changes=%d ok=%s duration_ms=%.1f problems=%d",
            result.revision,
            result.changes,
            result.ok,
            result.duration * 1000,
            len(problems),
        )
        for op in applied:
            log.debug("  %s", op)
        self._publish(result)
        return result

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
        while not self._stop.is_set():
            now, skipped = time.monotonic(), self.skipped_passes
            result = self.run_pass(full=wake is not Wake.DESIRED or now >= next_resync)
            if result.ok:
                delay = self._backoff_initial
                if self.skipped_passes == skipped:  # the data plane was observed: resync later
                    next_resync = now + self._resync * random.uniform(0.8, 1.2)
                timeout = max(0.0, next_resync - time.monotonic())
            else:
                timeout = delay * random.uniform(0.5, 1.0)
                delay = min(delay * 2, self._backoff_max)
            wake = self._trigger.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._trigger.fire()

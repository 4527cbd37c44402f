"""The seam between the reconciler and a data-plane backend.

A pass is ``actual = dp.observe(view)`` -> ``ops = dp.plan(view, actual)`` -> ``dp.apply(ops)``.
Invariant every backend keeps: after an ``apply`` that raised nothing, ``plan(view,
observe(view)) == ()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from controller.diag.facts import NetworkFacts
from controller.model.errors import HeddleError
from controller.model.view import HostView

S = TypeVar("S")
Op = TypeVar("Op")


class DataPlaneError(HeddleError):
    """Applying ops failed.

    ``op`` is the first op that failed; ``failures`` lists every failed op with its reason and
    ``skipped`` the ops not attempted because they needed something a failed op was to provide.
    Ops not listed in either were applied. The kernel is left as far as it got: the next pass
    observes and re-plans (every op is idempotent), so nothing has to be rolled back.
    """

    def __init__(
        self,
        op: object,
        reason: str,
        failures: Sequence[tuple[object, str]] = (),
        skipped: Sequence[object] = (),
    ) -> None:
        self.op = op
        self.reason = reason
        self.failures: tuple[tuple[object, str], ...] = tuple(failures) or ((op, reason),)
        self.skipped: tuple[object, ...] = tuple(skipped)
        more = len(self.failures) - 1
        tail = f" (and {more} more failed op(s))" if more > 0 else ""
        tail += f", {len(self.skipped)} dependent op(s) skipped" if self.skipped else ""
        super().__init__(f"{op}: {reason}{tail}")


class OpFailed(Exception):
    """Raised by a driver's single-op applier: this op failed for ``reason``; keep going with
    the ops that do not depend on it. Internal to drivers; callers see ``DataPlaneError``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DependentOp(Protocol):
    """An op that names the links it needs and the links it creates."""

    @property
    def needs(self) -> frozenset[str]: ...

    @property
    def provides(self) -> frozenset[str]: ...


D = TypeVar("D", bound=DependentOp)


def apply_all(
    ops: Iterable[D],
    apply_one: Callable[[D], None],
    *,
    batchable: Callable[[D], bool] | None = None,
    apply_batch: Callable[[Sequence[D]], Sequence[str | None]] | None = None,
    batch_size: int = 256,
    progress: Callable[[D], None] | None = None,
) -> None:
    """Apply ``ops`` in order; the failure policy shared by every driver.

    An op whose ``apply_one`` raises ``OpFailed`` is recorded and marks what it ``provides`` as
    broken; later ops that ``need`` something broken are skipped (and mark what they provide as
    broken in turn). Every other op is still applied, so one bad endpoint (say, its netns is
    missing) does not stop the rest of the host from converging. Raises ``DataPlaneError`` at
    the end if any op failed. Any other exception is a bug and propagates at once.

    Optionally, runs of consecutive ops for which ``batchable(op)`` holds (ops that provide
    nothing, such as FDB entries) go to ``apply_batch`` in chunks of at most ``batch_size``;
    it returns one failure reason (or ``None``) per op, in order.

    ``progress(op)`` is called once an op is done with (applied, failed or skipped), in order:
    the reconciler times the stages of a pass with it.
    """
    done = progress if progress is not None else (lambda op: None)
    failures: list[tuple[object, str]] = []
    skipped: list[object] = []
    broken: set[str] = set()
    pending: list[D] = []

    def flush() -> None:
        if pending and apply_batch is not None:
            for op, reason in zip(pending, apply_batch(pending), strict=True):
                if reason is not None:
                    failures.append((op, reason))
                    broken.update(op.provides)
                done(op)
        pending.clear()

    for op in ops:
        if op.needs & broken:
            skipped.append(op)
            broken |= op.provides
            done(op)
            continue
        if batchable is not None and apply_batch is not None and batchable(op):
            pending.append(op)
            if len(pending) >= batch_size:
                flush()
            continue
        flush()
        try:
            apply_one(op)
        except OpFailed as exc:
            failures.append((op, exc.reason))
            broken |= op.provides
        done(op)
    flush()
    if failures:
        first, reason = failures[0]
        raise DataPlaneError(first, reason, failures, skipped)


class DataPlane(Protocol[S, Op]):
    """A backend: ``S`` is its observed-state type, ``Op`` its op type.

    Not thread-safe: one reconciler thread drives one instance.
    """

    def observe(self, view: HostView) -> S:
        """Read the owned objects. ``view`` only scopes *where* to look (e.g. which endpoint
        namespaces), never what is reported as owned. Raises ``DataPlaneError`` if the host
        state cannot be read at all."""
        ...

    def plan(self, view: HostView, actual: S) -> tuple[Op, ...]:
        """Pure: the ordered ops that turn ``actual`` into ``view``; ``()`` when converged."""
        ...

    def apply(self, ops: Sequence[Op], progress: Callable[[Op], None] | None = None) -> None:
        """Apply ``ops`` in order, each idempotently. Raises ``DataPlaneError`` (after trying
        every op that does not depend on a failed one). ``progress(op)``: called as each op is
        done with (``apply_all``)."""
        ...

    def inventory(self, view: HostView, actual: S) -> Mapping[str, int]:
        """Pure: the owned objects by kind (FDB entries, flows, ...) once ``view`` is realised
        from ``actual``, i.e. after an ``apply`` that raised nothing (for the metrics)."""
        ...

    def facts(self, view: HostView, network: str, actual: S) -> NetworkFacts | None:
        """Pure: what ``actual`` holds for ``network`` of ``view`` (for ``heddle trace``);
        ``None`` if this host has no endpoint in it."""
        ...

    def drops(self) -> Mapping[str, int]:
        """Packets the data plane's filters dropped, by reason (``vxlan``: VXLAN not from a
        member; ``spoof``: a forged source on an endpoint port). Reads counters the kernel or
        OVS keeps, so it survives agent restarts. Raises ``DataPlaneError`` if unreadable."""
        ...

    @property
    def observed_in_full(self) -> bool:
        """Whether the last ``observe`` read the data plane (False: it returned an observation
        it remembered and moved on by its own applies, ``controller/dataplane/incremental.py``;
        drivers that never remember are always True)."""
        ...

    @property
    def settled(self) -> bool:
        """Whether the next event-driven pass can be planned against a remembered observation
        (False after a pass that changed what the driver cannot predict, such as links: the
        reconciler then reads the data plane once more at once). Drivers that never remember
        are always True: there is nothing to gain by reading again."""
        ...

    def forget(self) -> None:
        """Drop any remembered observation, so the next ``observe`` reads the data plane (the
        reconciler's periodic resync, its first pass, a retry). A no-op for drivers that
        remember nothing."""
        ...

    def close(self) -> None:
        """Release sockets/handles. Idempotent."""
        ...

"""Publishes pass results to ``/heddle/v1/status/<host>`` for ``heddle host ls``.

Writes when the result differs from the last one written (revision, ok, errors, problems, or a
pass that changed something) and otherwise at most every ``heartbeat`` seconds, so a quiet
cluster does not write to etcd on every resync. Never raises: etcd being down must not break a
pass, and status keys are not part of any agent's snapshot, so writing them wakes nobody.

The record stays small whatever is in etcd: the number of skipped records plus the first few
reasons, each cut short (``records.clip_reasons``); 1,000 bad records cost the same bytes as 5.
``stuck`` (from the ``stuck`` callable, normally the watcher's ``stalled``) says why the agent is
not following etcd; a stuck agent's status is not ``ok`` even if its passes succeed.
``metrics`` is where the agent serves metrics and diagnostics (``heddle trace`` asks there).
``notices`` (from the ``notices`` callable, normally ``Membership.notices``) says what the agent
had to repair behind someone else; a new notice is written at once, like an error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from controller.model import codec
from controller.model.errors import HeddleError
from controller.model.records import HostStatus, clip_reasons
from controller.reconcile.loop import PassResult
from controller.store import keys
from controller.store.kv import KV, Put, Txn

log = logging.getLogger("heddle.status")


class StatusWriter:
    """Callable ``on_result`` hook for the reconciler; thread-safe (the flush timer calls in).

    Three speeds: a result that says something new about the data plane (changes applied,
    ``ok``/errors/``stuck`` changed) is written at once; a *quiet* one (only the revision or the
    skipped records moved: a change elsewhere, a hostile writer's stream of bad records) at most
    every ``quiet_interval`` seconds, the last one flushed by a timer so it is never lost; an
    identical one only as a heartbeat. Why: every status write is an etcd write that every
    agent's watch receives; one write per bad record per host multiplied a hostile writer's
    load on etcd by the number of hosts.
    """

    def __init__(
        self,
        kv: KV,
        host: str,
        heartbeat: float = 30.0,
        stuck: Callable[[], str | None] = lambda: None,
        quiet_interval: float = 1.0,
        metrics: str | None = None,
        notices: Callable[[], tuple[str, ...]] = lambda: (),
    ) -> None:
        self._metrics = metrics
        self._notices = notices
        self._kv = kv
        self._host = host
        self._stuck = stuck
        self._heartbeat = heartbeat
        self._quiet = quiet_interval
        self._lock = threading.Lock()
        self._last: HostStatus | None = None
        self._last_write = 0.0
        self._pending: HostStatus | None = None
        self._timer: threading.Timer | None = None

    def __call__(self, result: PassResult) -> None:
        stuck = self._stuck()
        status = HostStatus(
            host=self._host,
            revision=result.revision,
            last_pass=result.started,
            ok=result.ok and stuck is None,
            changes=result.changes,
            errors=clip_reasons([result.error] if result.error else []),
            skipped=clip_reasons(result.problems),
            skipped_count=len(result.problems),
            stuck=clip_reasons([stuck])[0] if stuck else None,
            metrics=self._metrics,
            notices=clip_reasons(list(self._notices())),
        )
        with self._lock:
            now = time.monotonic()
            last = self._last
            since = now - self._last_write
            if last is not None and not status.changes and _health(status) == _health(last):
                if _progress(status) == _progress(last) and since < self._heartbeat:
                    return
                if since < self._quiet:
                    self._pending = status
                    if self._timer is None:
                        self._timer = threading.Timer(self._quiet - since, self._flush)
                        self._timer.daemon = True
                        self._timer.start()
                    return
            self._pending = None
            self._write(status, now)

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            pending, self._pending = self._pending, None
            if pending is not None:
                self._write(pending, time.monotonic())

    def close(self) -> None:
        """Publish a pending quiet status now and stop the timer. Idempotent."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._flush()

    def _write(self, status: HostStatus, now: float) -> None:
        try:
            self._kv.commit(
                Txn(success=(Put(keys.status(self._host), codec.encode_status(status).encode()),))
            )
        except HeddleError as exc:
            log.warning("could not publish status: %s", exc)
            return
        self._last, self._last_write = status, now


def _health(s: HostStatus) -> tuple[object, ...]:
    return (s.ok, s.errors, s.stuck, s.notices)


def _progress(s: HostStatus) -> tuple[object, ...]:
    return (s.revision, s.skipped, s.skipped_count)

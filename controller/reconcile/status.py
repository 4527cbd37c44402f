"""Publishes pass results to ``/heddle/v1/status/<host>`` for ``heddle host ls``.

Writes when the result differs from the last one written (revision, ok, errors, problems, or a
pass that changed something) and otherwise at most every ``heartbeat`` seconds, so a quiet
cluster does not write to etcd on every resync. Never raises: etcd being down must not break a
pass, and status keys are not part of any agent's snapshot, so writing them wakes nobody.

The record stays small whatever is in etcd: the number of skipped records plus the first few
reasons, each cut short (``records.clip_reasons``); 1,000 bad records cost the same bytes as 5.
``stuck`` (from the ``stuck`` callable, normally the watcher's ``stalled``) says why the agent is
not following etcd; a stuck agent's status is not ``ok`` even if its passes succeed.
"""

from __future__ import annotations

import logging
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
    """Callable ``on_result`` hook for the reconciler. Not thread-safe (one reconciler)."""

    def __init__(
        self,
        kv: KV,
        host: str,
        heartbeat: float = 30.0,
        stuck: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._kv = kv
        self._host = host
        self._stuck = stuck
        self._heartbeat = heartbeat
        self._last_key: tuple[object, ...] | None = None
        self._last_write = 0.0

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
        )
        key = (status.revision, status.ok, status.errors, status.skipped, status.skipped_count,
               status.stuck)  # fmt: skip
        now = time.monotonic()
        if (
            key == self._last_key
            and not result.changes
            and now - self._last_write < self._heartbeat
        ):
            return
        try:
            self._kv.commit(
                Txn(success=(Put(keys.status(self._host), codec.encode_status(status).encode()),))
            )
        except HeddleError as exc:
            log.warning("could not publish status: %s", exc)
            return
        self._last_key, self._last_write = key, now

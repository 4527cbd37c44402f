"""``Watcher``: keeps a ``Cache`` equal to etcd under a prefix, through outages and compaction.

One daemon thread runs sessions. A session takes a KV from ``kv_factory`` (a fresh one per
session, so no broken client state outlives a failure), lists the prefix at revision R if the
cache needs it, then watches from ``cache.revision + 1``:

* broken stream / etcd unreachable -> the session ends; the next one resumes from the last
  applied revision + 1 (no re-list, nothing missed, nothing applied twice);
* ``Compacted`` (the resume point is gone) -> re-list and diff against the cache, then watch on;
* retries back off exponentially with jitter (tenacity), capped at ``max_backoff`` seconds; the
  backoff restarts after a session that stayed healthy for ``healthy_after`` seconds. The wait
  is an ``Event.wait`` so ``stop()`` is prompt and a dead etcd never causes a busy loop.

Events only *wake* consumers: ``on_change`` is called (from the watcher thread, never under a
lock) after each batch or re-list that changed the decoded content; consumers then read
``cache.snapshot()``. ``on_synced`` (optional) is called once, after the first listing, even if
it was empty. An exception from either is logged and ignored.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import tenacity

from controller.model.errors import StoreUnavailable
from controller.store.kv import KV, Compacted, Listing, WatchBatch, WatchStream

log = logging.getLogger(__name__)


class Mirror(Protocol):
    """What a watcher keeps equal to etcd: ``controller.store.cache.Cache`` (decoded records),
    or a smaller mirror of one collection (``controller.store.interest``)."""

    @property
    def revision(self) -> int:
        """The etcd revision the mirror reflects (0 before the first listing)."""
        ...

    def apply(self, batch: WatchBatch) -> bool:
        """Apply one watch batch; True if the content changed. Idempotent per revision."""
        ...

    def replace_all(self, listing: Listing) -> bool:
        """Replace the content with a listing; True if the content changed."""
        ...


class _HealthySessionEnded(Exception):
    """A session that had been healthy for a while broke: reconnect with a fresh backoff."""


class Watcher:
    """Mirror ``prefix`` of the store into ``cache``; see the module docstring.

    ``start()`` and ``stop()`` are idempotent. Properties are safe to read from any thread.
    """

    def __init__(
        self,
        kv_factory: Callable[[], KV],
        prefix: str,
        cache: Mirror,
        on_change: Callable[[], None],
        *,
        on_synced: Callable[[], None] | None = None,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        healthy_after: float = 10.0,
    ) -> None:
        self._kv_factory = kv_factory
        self._prefix = prefix
        self._cache = cache
        self._on_change = on_change
        self._on_synced = on_synced
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._healthy_after = healthy_after
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None
        self._need_list = True
        self._connected = False
        self._last_error: str | None = None
        self._sessions = 0
        self._failures = 0
        self._relists = 0
        self._revision_seen = 0
        self._down_since: float | None = time.monotonic()  # not following etcd since

    # -- state --------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while a watch stream is established and the cache is following it."""
        return self._connected

    @property
    def last_error(self) -> str | None:
        """The error that ended the last failed session (None once healthy again)."""
        return self._last_error

    @property
    def reconnects(self) -> int:
        """Sessions started after the first one (each follows a failure or compaction)."""
        return max(0, self._sessions - 1)

    @property
    def relists(self) -> int:
        """Full listings of the prefix since start (the first one included)."""
        return self._relists

    @property
    def revision_seen(self) -> int:
        """The newest etcd revision a listing or watch response carried (0 before any)."""
        return self._revision_seen

    @property
    def failures(self) -> int:
        """Failed attempts (connect, list or stream) since start."""
        return self._failures

    def stalled(self, after: float) -> str | None:
        """Why the cache has not followed etcd for more than ``after`` seconds, or None.

        For status: an agent whose watch keeps failing still runs resync passes on an old
        picture, and must say so instead of looking healthy."""
        since = self._down_since
        if since is None or self._connected:
            return None
        for_s = time.monotonic() - since
        if for_s <= after:
            return None
        return f"not following etcd for {for_s:.0f} s: {self._last_error or 'connecting'}"

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait until the cache holds a first complete listing; False on timeout."""
        return self._synced.wait(timeout)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"watcher {self._prefix}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread: cancels the open stream and interrupts any backoff. A unary call in
        flight (at most the KV timeout) is waited for, up to ``timeout``."""
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            retryer = tenacity.Retrying(
                retry=tenacity.retry_if_exception_type(StoreUnavailable),
                # exponential from initial_backoff plus up to 0.5 s of jitter, capped in total
                wait=tenacity.wait_exponential(
                    multiplier=self._initial_backoff, max=max(0.0, self._max_backoff - 0.5)
                )
                + tenacity.wait_random(0, min(0.5, self._max_backoff)),
                stop=tenacity.stop_when_event_set(self._stop),
                sleep=self._sleep,
                before_sleep=self._before_sleep,
                reraise=True,
            )
            try:
                retryer(self._session)
            except _HealthySessionEnded:
                continue
            except StoreUnavailable:
                continue  # stop() was requested during a retry; the loop condition ends it
            except Exception as exc:  # a bug: log it, never die, never spin
                log.exception("watcher on %s: unexpected error", self._prefix)
                self._last_error = f"internal error: {type(exc).__name__} (see log)"
                if self._down_since is None:
                    self._down_since = time.monotonic()
                self._stop.wait(self._max_backoff)
        self._connected = False

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # interruptible by stop()

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "watcher on %s: %s; retry #%d in %.2fs",
            self._prefix,
            exc,
            state.attempt_number,
            state.upcoming_sleep,
        )

    def _session(self) -> None:
        self._sessions += 1
        try:
            kv = self._kv_factory()
        except StoreUnavailable as exc:
            self._failed(exc)
            raise
        began: float | None = None
        try:
            while not self._stop.is_set():
                if self._need_list:
                    listing = kv.list(self._prefix)
                    self._relists += 1
                    self._revision_seen = max(self._revision_seen, listing.revision)
                    changed = self._cache.replace_all(listing)
                    self._need_list = False
                    first = not self._synced.is_set()
                    self._synced.set()
                    if changed:
                        self._notify()
                    if first and self._on_synced is not None:
                        self._call(self._on_synced)
                try:
                    stream = kv.watch(self._prefix, self._cache.revision + 1)
                    with self._lock:
                        self._stream = stream
                    if self._stop.is_set():
                        return
                    self._connected = True
                    self._down_since = None
                    self._last_error = None
                    began = time.monotonic()
                    for batch in stream:
                        self._revision_seen = max(self._revision_seen, batch.revision)
                        if self._cache.apply(batch):
                            self._notify()
                except Compacted as exc:
                    log.info("watcher on %s: %s; re-listing", self._prefix, exc)
                    self._need_list = True
                    self._connected = False
                    continue
                finally:
                    with self._lock:
                        open_stream, self._stream = self._stream, None
                    if open_stream is not None:
                        with contextlib.suppress(Exception):
                            open_stream.cancel()
                if not self._stop.is_set():
                    raise StoreUnavailable(f"watch on {self._prefix} ended unexpectedly")
        except StoreUnavailable as exc:
            self._failed(exc)
            if began is not None and time.monotonic() - began >= self._healthy_after:
                log.warning("watcher on %s: %s; reconnecting", self._prefix, exc)
                raise _HealthySessionEnded() from exc
            raise
        finally:
            self._connected = False
            with contextlib.suppress(Exception):
                kv.close()

    def _failed(self, exc: StoreUnavailable) -> None:
        self._connected = False
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._failures += 1
        self._last_error = str(exc)

    def _notify(self) -> None:
        self._call(self._on_change)

    def _call(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("watcher on %s: callback failed", self._prefix)

"""``Membership``: this host's persistent host record and its leased liveness key.

``start()`` writes ``/heddle/v1/hosts/<name>`` (persistent: a stopped agent keeps its endpoints
desired) and ``/heddle/v1/alive/<name>`` on a lease of ``ttl`` seconds, in one transaction. A
daemon thread refreshes the lease every ``ttl/3``. When the lease is lost (refresh returns
<= 0: expired during an outage, revoked by someone) it grants a new one and writes both keys
again; after etcd was unreachable it re-asserts the alive key on the surviving lease. While etcd
is down it retries with a jittered exponential backoff capped at ``ttl/3`` (never a busy loop).
``stop()`` revokes the lease so the alive key disappears at once, not after ``ttl``.

The host record is this agent's: on every refresh it reads ``hosts/<name>`` back, and when
another client rewrote or deleted it (another VTEP would send every peer's traffic for this
host elsewhere) it puts its own record back, logs a warning and counts it (``restored``,
``notices``, which the status record and the metrics report). With per-host etcd identities
(``controller/store/access.py``) only the operator can still do that.

Thread-safe for the documented use: ``start``/``stop`` from one thread, properties from any.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable

from controller.model import codec
from controller.model.errors import InvalidRecord, StoreRefused, StoreUnavailable, brief
from controller.model.records import Alive, Host
from controller.store import keys
from controller.store.kv import KV, Put, Txn

log = logging.getLogger(__name__)


class Membership:
    """Register ``host`` and keep it alive in the store; see the module docstring."""

    def __init__(
        self, kv: KV, host: Host, ttl: int = 10, clock: Callable[[], float] = time.time
    ) -> None:
        if ttl < 2:
            raise ValueError("ttl must be at least 2 s (etcd's minimum lease TTL)")
        self._kv = kv
        self._host = host
        self._ttl = ttl
        self._clock = clock
        self._since = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lease: int | None = None
        self._alive = False
        self._last_error: str | None = None
        self._last_contact: float | None = None  # time.monotonic() of the last success
        self.registrations = 0
        self.restored = 0  # times the host record was found changed by someone else
        self._last_restore: str | None = None

    @property
    def alive(self) -> bool:
        """True while the alive key is believed to exist (last contact with etcd succeeded)."""
        return self._alive

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def last_contact(self) -> float | None:
        """``time.monotonic()`` when etcd last answered a refresh or registration (None: never)."""
        return self._last_contact

    def notices(self) -> tuple[str, ...]:
        """What the agent had to repair (for the status record); ``()`` while nothing was."""
        if not self.restored:
            return ()
        return (f"host record restored {self.restored} time(s); last found {self._last_restore}",)

    @property
    def lease(self) -> int | None:
        return self._lease

    def start(self) -> bool:
        """Register now (one attempt) and start the keepalive thread; True if registered.

        Never raises for an unreachable etcd: the thread keeps trying. Idempotent.
        """
        if self._thread is not None:
            return self._alive
        self._attempt()
        self._thread = threading.Thread(
            target=self._run, name=f"membership {self._host.name}", daemon=True
        )
        self._thread.start()
        return self._alive

    def stop(self, timeout: float = 10.0) -> None:
        """Stop refreshing and revoke the lease (best effort: logged if etcd is down)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        lease, self._lease = self._lease, None
        self._alive = False
        if lease is not None:
            try:
                self._kv.revoke_lease(lease)
            except StoreUnavailable as exc:
                log.warning(
                    "membership: could not revoke lease (expires in %ss): %s", self._ttl, exc
                )

    # -- internals ----------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while True:
            if self._alive:
                delay = self._ttl / 3
            else:
                cap = self._ttl / 3
                delay = min(cap, 0.2 * 2**failures) * random.uniform(0.5, 1.0)
            if self._stop.wait(delay):
                return
            failures = 0 if self._attempt() else min(failures + 1, 10)

    def _attempt(self) -> bool:
        """One refresh (or registration); True on success. Never raises StoreUnavailable."""
        was_alive = self._alive
        try:
            if self._lease is not None:
                remaining = self._kv.refresh_lease(self._lease)
                if remaining > 0:
                    if not was_alive:
                        self._put_alive(self._lease)  # re-assert after an outage
                    self._guard_record()
                    self._alive = True
                    self._last_error = None
                    self._last_contact = time.monotonic()
                    return True
                log.warning("membership: lease %x lost; registering again", self._lease)
                self._lease = None
            self._register()
            self._alive = True
            self._last_error = None
            self._last_contact = time.monotonic()
            return True
        except StoreUnavailable as exc:
            if was_alive:
                log.warning("membership: etcd unreachable: %s", exc)
            self._alive = False
            self._last_error = str(exc)
            return False

    def _register(self) -> None:
        lease = self._kv.grant_lease(self._ttl)
        self._kv.commit(
            Txn(
                success=(
                    Put(keys.host(self._host.name), codec.encode_host(self._host).encode()),
                    Put(keys.alive(self._host.name), self._alive_value(), lease),
                )
            )
        )
        self._lease = lease
        self.registrations += 1
        log.info("membership: %s registered (lease %x)", self._host.name, lease)

    def _guard_record(self) -> None:
        """Read the host record back; put it back if someone else changed or deleted it.
        Raises ``StoreUnavailable`` (not ``StoreRefused``: a refusal is logged and kept as
        the last error, since retrying with this identity cannot help)."""
        key = keys.host(self._host.name)
        got = self._kv.get(key)
        if got is not None:
            try:
                if codec.decode_host(got.value) == self._host:
                    return
            except InvalidRecord:
                pass
        found = "it deleted" if got is None else brief(got.value.decode(errors="replace"), 120)
        try:
            self._kv.commit(Txn(success=(Put(key, codec.encode_host(self._host).encode()),)))
        except StoreRefused as exc:
            log.error("membership: %s was changed to %s; cannot put it back: %s", key, found, exc)
            self._last_error = str(exc)
            return
        self.restored += 1
        self._last_restore = f"{found} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        log.warning("membership: %s was changed by someone else (%s); put back", key, found)

    def _put_alive(self, lease: int) -> None:
        self._kv.commit(
            Txn(success=(Put(keys.alive(self._host.name), self._alive_value(), lease),))
        )

    def _alive_value(self) -> bytes:
        return codec.encode_alive(Alive(self._since, os.getpid())).encode()

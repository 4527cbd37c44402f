"""One etcd watch stream as the ``KV`` seam's ``Watch`` (``controller/store/kv.py``), for
``controller/store/etcd.py``'s ``EtcdKV.watch``: batches of events from a start revision, the
extra revision that ``watch`` asks for dropped, progress notifications as empty batches, and
every failure raised as ``controller/store/etcd_errors.py`` says. The stream owns its client and
closes it when it ends or is cancelled, so a broken stream leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pyetcd

from controller.model.errors import StoreUnavailable
from controller.store.etcd_errors import DOWN, raise_store_error
from controller.store.kv import Event, KeyValue, WatchBatch


def kv_of(m: Any) -> KeyValue:
    """The ``KeyValue`` of etcd's ``mvccpb.KeyValue`` message ``m``."""
    return KeyValue(
        m.key.decode(), bytes(m.value), m.create_revision, m.mod_revision, m.version, m.lease
    )


class EtcdWatch:
    """One watch stream on its own client. Iterate from one thread; ``cancel()`` from any."""

    def __init__(
        self,
        urls: Sequence[str],
        client: Any,
        it: Iterator[Any],
        cancel: Any,
        prefix: str,
        start: int,
    ) -> None:
        self._start = start
        self._urls = tuple(urls)
        self._client = client
        self._it = it
        self._cancel_fn = cancel
        self._prefix = prefix
        self._cancelled = threading.Event()
        self._closed = False
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            for resp in self._it:
                if self._cancelled.is_set():
                    return
                events = tuple(
                    Event("put", kv_of(e._event.kv))
                    if isinstance(e, pyetcd.events.PutEvent)
                    else Event("delete", KeyValue(e.key.decode(), b"", 0, e.mod_revision, 0))
                    for e in resp.events
                    if e.mod_revision >= self._start
                )
                if resp.events and not events:
                    continue  # only the extra revision asked for in watch()
                # events: the last mod_revision, not the header (a catch-up batch may stop short
                # of the header revision); progress notifications: the header revision
                rev = events[-1].kv.mod_revision if events else int(resp.header.revision)
                yield WatchBatch(events, rev)
        except DOWN as exc:
            if self._cancelled.is_set():
                return
            raise_store_error(self._urls, f"watch {self._prefix}", exc)
        finally:
            self._close()
        if not self._cancelled.is_set():
            raise StoreUnavailable(
                f"etcd at {','.join(self._urls)}: watch stream on {self._prefix} ended"
            )

    def cancel(self) -> None:
        """Stop the stream: a running iteration ends without error. Idempotent, thread-safe."""
        self._cancelled.set()
        with contextlib.suppress(Exception):
            self._cancel_fn()
        self._close()

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(Exception):
            self._client.close()

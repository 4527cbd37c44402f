"""``MemoryKV``: a stateful in-memory ``KV`` with etcd's revision, lease and watch semantics.

Used by unit tests and by anything that wants the store without a server. It is checked against
the real etcd by the shared contract test (tests/integration/test_kv_contract.py). Thread-safe.
Failure injection: set ``available = False`` and every call raises ``StoreUnavailable``; open
watch streams end with ``StoreUnavailable``.
"""

from __future__ import annotations

import builtins
import itertools
import threading
import time
from collections.abc import Iterator, Sequence

from controller.model.errors import StoreUnavailable
from controller.store.kv import (
    MAX_READS,
    Compacted,
    Compare,
    Delete,
    Event,
    KeyValue,
    Listing,
    Put,
    Read,
    Txn,
    TxnOp,
    TxnResult,
    WatchBatch,
)


class MemoryKV:
    """In-memory etcd: revisions, transactions, leases (with expiry), watch history, compaction."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._data: dict[str, KeyValue] = {}
        self._revision = 1
        self._history: list[Event] = []
        self._compacted = 0
        self._leases: dict[int, tuple[int, float]] = {}
        self._lease_ids = itertools.count(0x1000)
        self._available = True

    # -- failure injection -------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self._available

    @available.setter
    def available(self, value: bool) -> None:
        with self._lock:
            self._available = value
            self._lock.notify_all()

    def _check(self) -> None:
        if not self._available:
            raise StoreUnavailable("memory store made unavailable")
        self._expire_leases()

    # -- reads -------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        return self._revision

    def get(self, key: str) -> KeyValue | None:
        with self._lock:
            self._check()
            return self._data.get(key)

    def list(self, prefix: str, revision: int | None = None) -> Listing:
        with self._lock:
            self._check()
            if revision is None or revision == self._revision:
                items = tuple(kv for k, kv in sorted(self._data.items()) if k.startswith(prefix))
                return Listing(items, self._revision)
            if revision < self._compacted:  # etcd still serves the compaction point itself
                raise Compacted(self._compacted)
            if revision > self._revision:
                raise StoreUnavailable("memory store: required revision is a future revision")
            return Listing(self._state_at(prefix, revision), revision)

    def read(self, reads: Sequence[Read]) -> tuple[Listing, ...]:
        if len(reads) > MAX_READS:
            raise ValueError(f"{len(reads)} reads in one: at most {MAX_READS}")
        with self._lock:
            self._check()
            out = []
            for r in reads:
                if r.prefix:
                    items = tuple(kv for k, kv in sorted(self._data.items()) if k.startswith(r.key))
                else:
                    kv = self._data.get(r.key)
                    items = (kv,) if kv is not None else ()
                out.append(Listing(items, self._revision))
            return tuple(out)

    def _state_at(self, prefix: str, revision: int) -> tuple[KeyValue, ...]:
        state: dict[str, KeyValue] = {}
        for ev in self._history:
            if ev.kv.mod_revision > revision:
                break
            if not ev.kv.key.startswith(prefix):
                continue
            if ev.kind == "put":
                state[ev.kv.key] = ev.kv
            else:
                state.pop(ev.kv.key, None)
        return tuple(v for _, v in sorted(state.items()))

    # -- writes ------------------------------------------------------------------------------
    def commit(self, txn: Txn) -> TxnResult:
        with self._lock:
            self._check()
            ok = all(self._holds(c) for c in txn.compares)
            ops = txn.success if ok else txn.failure
            self._refuse_overlaps(ops)
            if self._apply(ops):
                self._lock.notify_all()
            return TxnResult(ok, self._revision)

    @staticmethod
    def _refuse_overlaps(ops: tuple[TxnOp, ...]) -> None:
        """etcd refuses a branch that writes one key twice or puts a key it also deletes."""
        puts = [op.key for op in ops if isinstance(op, Put)]
        deletes = [op for op in ops if not isinstance(op, Put)]
        clash = len(set(puts)) != len(puts) or any(
            (k == d.key) if isinstance(d, Delete) else k.startswith(d.prefix)
            for k in puts
            for d in deletes
        )
        if clash:
            raise StoreUnavailable("memory store: duplicate key given in txn request")

    def _holds(self, c: Compare) -> bool:
        kv = self._data.get(c.key)
        actual: int | bytes
        if c.target == "create":
            actual = kv.create_revision if kv else 0
        elif c.target == "mod":
            actual = kv.mod_revision if kv else 0
        elif c.target == "version":
            actual = kv.version if kv else 0
        else:
            if kv is None:
                return False
            actual = kv.value
        want = c.value
        if c.op == "=":
            return actual == want
        if c.op == "!=":
            return actual != want
        if isinstance(actual, bytes) or isinstance(want, bytes):
            a, w = bytes(actual) if isinstance(actual, bytes) else b"", want
            return (a < w) if c.op == "<" else (a > w)  # type: ignore[operator]
        return actual < want if c.op == "<" else actual > want

    def _apply(self, ops: tuple[TxnOp, ...]) -> bool:
        changes: builtins.list[Event] = []
        rev = self._revision + 1
        for op in ops:
            if isinstance(op, Put):
                if op.lease and op.lease not in self._leases:
                    raise StoreUnavailable(f"lease {op.lease:x} not found")
                old = self._data.get(op.key)
                kv = KeyValue(
                    op.key,
                    op.value,
                    old.create_revision if old else rev,
                    rev,
                    (old.version + 1) if old else 1,
                    op.lease,
                )
                self._data[op.key] = kv
                changes.append(Event("put", kv))
            else:
                keys = (
                    [op.key]
                    if isinstance(op, Delete)
                    else [k for k in self._data if k.startswith(op.prefix)]
                )
                for k in sorted(keys):
                    if self._data.pop(k, None) is not None:
                        changes.append(Event("delete", KeyValue(k, b"", 0, rev, 0)))
        if changes:
            self._revision = rev
            self._history.extend(changes)
        return bool(changes)

    # -- leases ------------------------------------------------------------------------------
    def grant_lease(self, ttl: int) -> int:
        with self._lock:
            self._check()
            lid = next(self._lease_ids)
            self._leases[lid] = (ttl, time.monotonic() + ttl)
            return lid

    def refresh_lease(self, lease_id: int) -> int:
        with self._lock:
            self._check()
            if lease_id not in self._leases:
                return -1
            ttl, _ = self._leases[lease_id]
            self._leases[lease_id] = (ttl, time.monotonic() + ttl)
            return ttl

    def revoke_lease(self, lease_id: int) -> None:
        with self._lock:
            self._check()
            self._drop_lease(lease_id)

    def expire_lease(self, lease_id: int) -> None:
        """Test hook: make a lease expire now, as etcd would after its TTL."""
        with self._lock:
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        if self._leases.pop(lease_id, None) is None:
            return
        doomed = tuple(Delete(k) for k, kv in self._data.items() if kv.lease == lease_id)
        if self._apply(doomed):
            self._lock.notify_all()

    def _expire_leases(self) -> None:
        now = time.monotonic()
        for lid, (_, deadline) in list(self._leases.items()):
            if deadline < now:
                self._drop_lease(lid)

    # -- watch and compaction ----------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int) -> _MemoryWatch:
        with self._lock:
            self._check()
            return _MemoryWatch(self, prefix, start_revision)

    def compact(self, revision: int) -> None:
        with self._lock:
            self._check()
            if revision > self._revision:
                raise StoreUnavailable("memory store: required revision is a future revision")
            self._compacted = max(self._compacted, revision)
            self._lock.notify_all()

    def close(self) -> None:
        return None

    # used by _MemoryWatch, under the lock
    def _events_since(self, prefix: str, start: int) -> builtins.list[Event]:
        if start <= self._compacted:
            raise Compacted(self._compacted)
        return [
            ev
            for ev in self._history
            if ev.kv.mod_revision >= start and ev.kv.key.startswith(prefix)
        ]

    def put_raw(self, key: str, value: bytes | str, lease: int = 0) -> int:
        """Convenience for tests: an unconditional put; returns the new revision."""
        raw = value.encode() if isinstance(value, str) else value
        return self.commit(Txn(success=(Put(key, raw, lease),))).revision


class _MemoryWatch:
    def __init__(self, kv: MemoryKV, prefix: str, start_revision: int) -> None:
        self._kv = kv
        self._prefix = prefix
        self._next = start_revision
        self._cancelled = False
        self.progress_interval = 0.5

    def cancel(self) -> None:
        with self._kv._lock:
            self._cancelled = True
            self._kv._lock.notify_all()

    def __iter__(self) -> Iterator[WatchBatch]:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            yield batch

    def _next_batch(self) -> WatchBatch | None:
        """The next batch of events, or an empty progress batch after an idle interval (as
        etcd sends when asked for progress notifications); None once cancelled."""
        kv = self._kv
        with kv._lock:
            while True:
                if self._cancelled:
                    return None
                if not kv._available:
                    raise StoreUnavailable("memory store made unavailable")
                events = kv._events_since(self._prefix, self._next)
                if events:
                    rev = events[-1].kv.mod_revision
                    self._next = rev + 1
                    return WatchBatch(tuple(events), rev)
                if not kv._lock.wait(timeout=self.progress_interval):
                    kv._expire_leases()
                    if not kv._events_since(self._prefix, self._next):
                        self._next = max(self._next, kv._revision + 1)
                        return WatchBatch((), kv._revision)

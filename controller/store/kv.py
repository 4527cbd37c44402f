"""The KV seam: the small, typed slice of etcd v3 that heddle uses.

Two implementations honour it: ``controller.store.etcd.EtcdKV`` (the only module that imports the
etcd client) and ``controller.store.memory.MemoryKV`` (a stateful in-memory fake with etcd's
revision semantics, for unit tests). ``tests/integration/test_kv_contract.py`` runs the same
contract against both, so the fake cannot drift from the real thing.

Semantics follow etcd v3: one global revision, incremented by each write transaction; every key
carries ``create_revision`` (0 when absent), ``mod_revision`` and ``version``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from controller.model.errors import HeddleError, StoreUnavailable

__all__ = [
    "MAX_READS",
    "Compacted",
    "Compare",
    "Delete",
    "DeletePrefix",
    "Event",
    "KeyValue",
    "Listing",
    "Put",
    "Read",
    "StoreUnavailable",
    "Txn",
    "WatchBatch",
]


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int = 1
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Listing:
    """A consistent range read: the items under a prefix at ``revision`` (sorted by key)."""

    items: tuple[KeyValue, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class Read:
    """One range of ``KV.read``: the key ``key``, or with ``prefix`` every key under it."""

    key: str
    prefix: bool = False


MAX_READS = 128
"""The most ranges one ``KV.read`` takes: etcd's default ``--max-txn-ops`` (a read is one
transaction of range requests). Callers with more split them, and lose the one revision."""


@dataclass(frozen=True, slots=True)
class Compare:
    """A transaction guard on one key, e.g. ``Compare(k, "create", "=", 0)`` ("k is absent")."""

    key: str
    target: Literal["create", "mod", "version", "value"]
    op: Literal["=", "!=", "<", ">"]
    value: int | bytes


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class DeletePrefix:
    prefix: str


TxnOp = Put | Delete | DeletePrefix


@dataclass(frozen=True, slots=True)
class Txn:
    """An etcd transaction: if every compare holds, apply ``success`` else ``failure``; atomic."""

    compares: tuple[Compare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change; ``kv.value`` is empty and ``kind`` is ``"delete"`` for deletions."""

    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events of one watch response, all with mod_revision <= ``revision``.

    An empty ``events`` with a ``revision`` is a progress notification: nothing up to
    ``revision`` is left to deliver.
    """

    events: tuple[Event, ...]
    revision: int


class Compacted(HeddleError):
    """The requested start revision was compacted away; the caller must re-list."""

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(f"revision compacted (oldest available: {compacted_revision})")
        self.compacted_revision = compacted_revision


class WatchStream(Protocol):
    """An open watch. Iterating yields batches until ``cancel()``; then it stops.

    Iteration raises ``Compacted`` if the start revision is gone and ``StoreUnavailable`` when
    the connection breaks (including a frozen server, detected by keepalive within seconds).
    """

    def __iter__(self) -> Iterator[WatchBatch]: ...

    def cancel(self) -> None: ...


class KV(Protocol):
    """The store seam. Every method raises ``StoreUnavailable`` when etcd cannot be reached."""

    def get(self, key: str) -> KeyValue | None: ...

    def list(self, prefix: str, revision: int | None = None) -> Listing:
        """All keys under ``prefix`` at ``revision`` (default: now), consistent with each other."""
        ...

    def read(self, reads: Sequence[Read]) -> tuple[Listing, ...]:
        """Up to ``MAX_READS`` ranges in one round trip, all at one revision: per read, its
        items sorted by key (at most one for a key). ``ValueError`` for more reads."""
        ...

    def commit(self, txn: Txn) -> TxnResult:
        """Apply ``txn`` atomically; never partially."""
        ...

    def grant_lease(self, ttl: int) -> int: ...

    def refresh_lease(self, lease_id: int) -> int:
        """Keep a lease alive; returns the remaining TTL, or <= 0 if the lease is gone."""
        ...

    def revoke_lease(self, lease_id: int) -> None: ...

    def watch(self, prefix: str, start_revision: int) -> WatchStream:
        """Watch ``prefix`` from ``start_revision`` (inclusive), with progress notifications."""
        ...

    def compact(self, revision: int) -> None: ...

    def close(self) -> None: ...

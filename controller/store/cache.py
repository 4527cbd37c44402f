"""``Cache``: the decoded mirror of ``/heddle/v1/`` that the reconciler reads snapshots from.

Records are decoded once, when their event (or listing) arrives, with ``controller.model.codec``.
A value that fails validation, or whose name disagrees with its key, is logged, counted and
listed in ``skipped`` (key -> reason) -- never raised: one bad write by any etcd client must not
stop an agent. Whatever an event holds, ``apply`` and ``replace_all`` consume it and move the
revision on, so a bad batch is never retried for ever. Reasons quote a bounded prefix of the key
and value. Keys outside the collections heddle reads here (vnis, ipam, status) are ignored.

Valid records that conflict (one address, MAC or interface claimed twice, one VNI for two
networks) are resolved when the snapshot is built (``controller.model.conflicts``: the older
record wins) and the losers are listed in the snapshot's ``skipped`` with the reason.

Thread-safe (one lock); ``snapshot()`` returns an immutable ``Snapshot`` that is built at most
once per change, so reading it is cheap and never re-decodes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from controller.model import codec
from controller.model.conflicts import resolve
from controller.model.errors import InvalidRecord, clip
from controller.model.records import Alive, Endpoint, Host, Network
from controller.model.view import Snapshot
from controller.store import keys
from controller.store.kv import KeyValue, Listing, WatchBatch

log = logging.getLogger(__name__)

Record = Network | Endpoint | Host | Alive
Ident = str | tuple[str, str]

_KINDS = ("networks", "endpoints", "hosts", "alive")


@dataclass(frozen=True, slots=True)
class _Entry:
    """What one key currently holds: a decoded record, or the reason it was skipped."""

    mod_revision: int
    create_revision: int
    kind: str
    ident: Ident | None
    record: Record | None
    error: str | None


def _decode(kv: KeyValue) -> _Entry | None:
    """Decode one key; None if the key is not in a collection the cache mirrors. Never raises:
    anything unexpected becomes a skipped entry, so no value can stop the cache."""
    try:
        return _decode_strict(kv)
    except Exception as exc:
        log.exception("decoding %s failed unexpectedly", clip(kv.key))
        kind = keys.kind_of(kv.key) or "unknown"
        return _Entry(kv.mod_revision, kv.create_revision, kind, None, None,
                      f"cannot decode: {type(exc).__name__}")  # fmt: skip


def _decode_strict(kv: KeyValue) -> _Entry | None:
    kind = keys.kind_of(kv.key)
    if kind not in _KINDS:
        return None
    assert kind is not None
    tail = keys.split_tail(kv.key, f"{keys.ROOT}{kind}/")
    ident: Ident | None = None
    try:
        if kind == "endpoints":
            if len(tail) != 2 or not all(tail):
                raise InvalidRecord("endpoint key must be endpoints/<network>/<id>")
            ident = (tail[0], tail[1])
            ep = codec.decode_endpoint(kv.value)
            if (ep.network, ep.id) != ident:
                raise InvalidRecord(f"endpoint {ep.network}/{ep.id} stored under the wrong key")
            return _Entry(kv.mod_revision, kv.create_revision, kind, ident, ep, None)
        if len(tail) != 1 or not tail[0]:
            raise InvalidRecord(f"{kind} key must be {kind}/<name>")
        ident = tail[0]
        record: Record
        if kind == "networks":
            record = codec.decode_network(kv.value)
        elif kind == "hosts":
            record = codec.decode_host(kv.value)
        else:
            record = codec.decode_alive(kv.value)
        name = getattr(record, "name", ident)
        if name != ident:
            raise InvalidRecord(f"{kind[:-1] if kind != 'alive' else kind} name {name!r} "
                                f"disagrees with its key")  # fmt: skip
        return _Entry(kv.mod_revision, kv.create_revision, kind, ident, record, None)
    except InvalidRecord as exc:
        return _Entry(kv.mod_revision, kv.create_revision, kind, None, None, str(exc))


@dataclass(frozen=True, slots=True)
class Contents:
    """What a cache holds, before conflicts are resolved: records with their create_revision
    (the older record wins a conflict), and skipped keys with the reason; ``changed_at``: the
    revision of the last write to a mirrored key (or of the listing that changed the content),
    never of a progress notification; ``version``: how often the decoded content changed (equal
    versions of one cache mean equal content). Copies: for a
    reader that composes one snapshot from several caches (``controller/store/interest.py``)."""

    revision: int
    changed_at: int
    version: int
    networks: Mapping[str, tuple[int, Network]]
    endpoints: Mapping[tuple[str, str], tuple[int, Endpoint]]
    hosts: Mapping[str, Host]
    alive: frozenset[str]
    skipped: Mapping[str, str]


class Cache:
    """Decoded records under ``/heddle/v1/`` at ``revision``; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._networks: dict[str, tuple[int, Network]] = {}
        self._endpoints: dict[tuple[str, str], tuple[int, Endpoint]] = {}
        self._hosts: dict[str, Host] = {}
        self._alive: dict[str, Alive] = {}
        self._skipped: dict[str, str] = {}
        self._revision = 0
        self._changed_at = 0
        self.version = 0
        self._snapshot: Snapshot | None = None
        self.events_applied = 0
        self.invalid_records = 0
        self.relists = 0

    # -- reads --------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        """The etcd revision the cache reflects (0 before the first listing)."""
        with self._lock:
            return self._revision

    @property
    def skipped(self) -> Mapping[str, str]:
        """Keys whose values were rejected, with the reason (a copy)."""
        with self._lock:
            return dict(self._skipped)

    def mod_revisions(self) -> dict[str, int]:
        """Every mirrored key (valid or skipped) with its mod_revision: for checks and tests."""
        with self._lock:
            return {k: e.mod_revision for k, e in self._entries.items()}

    def contents(self) -> Contents:
        """A copy of the decoded content (see ``Contents``); O(records held)."""
        with self._lock:
            return Contents(
                self._revision, self._changed_at, self.version, dict(self._networks),
                dict(self._endpoints),
                dict(self._hosts), frozenset(self._alive), dict(self._skipped),
            )  # fmt: skip

    def snapshot(self) -> Snapshot:
        """An immutable picture at ``revision``. Cheap: rebuilt only after a change."""
        with self._lock:
            snap = self._snapshot
            if snap is None or snap.revision != self._revision:
                if snap is not None and snap.revision != self._revision:
                    # only the revision moved (progress, ignored keys): share the mappings
                    snap = Snapshot(
                        self._revision, snap.networks, snap.endpoints, snap.hosts, snap.alive,
                        snap.skipped,
                    )  # fmt: skip
                else:
                    won = resolve(self._networks, self._endpoints)
                    bad = sorted(self._skipped.items())
                    invalid = (f"{clip(k)}: {why}" for k, why in bad)
                    snap = Snapshot(
                        self._revision,
                        MappingProxyType(dict(won.networks)),
                        MappingProxyType(dict(won.endpoints)),
                        MappingProxyType(dict(self._hosts)),
                        frozenset(self._alive),
                        (*invalid, *won.problems),
                    )
                self._snapshot = snap
            return snap

    # -- writes -------------------------------------------------------------------------------
    def apply(self, batch: WatchBatch) -> bool:
        """Apply one watch batch; True if any decoded record (or skip) changed.

        Idempotent: events at or below ``revision`` are ignored (a resumed watch may replay).
        """
        with self._lock:
            changed = False
            try:
                for ev in batch.events:
                    if ev.kv.mod_revision <= self._revision:
                        continue
                    entry = _decode(ev.kv) if ev.kind == "put" else None
                    changed |= self._set(ev.kv.key, entry, deleted=ev.kind == "delete")
                    self.events_applied += 1
                    if keys.kind_of(ev.kv.key) in _KINDS:  # a mirrored record was written
                        self._changed_at = ev.kv.mod_revision
            finally:  # never leave the revision behind a batch: it would be replayed for ever
                self._revision = max(self._revision, batch.revision)
            return changed

    def replace_all(self, listing: Listing) -> bool:
        """Replace the content with a fresh listing (after compaction or at start).

        Diffs against the current content: unchanged keys (same mod_revision) are not decoded
        again, and the result is True only if some decoded record (or skip) changed.
        """
        with self._lock:
            changed = False
            fresh = {kv.key: kv for kv in listing.items}
            for key in [k for k in self._entries if k not in fresh]:
                changed |= self._set(key, None, deleted=True)
            for key, kv in fresh.items():
                old = self._entries.get(key)
                if old is not None and old.mod_revision == kv.mod_revision:
                    continue
                changed |= self._set(key, _decode(kv), deleted=False)
            self._revision = listing.revision
            if changed or not self._changed_at:
                self._changed_at = listing.revision
            self.relists += 1
            return changed

    def _set(self, key: str, entry: _Entry | None, *, deleted: bool) -> bool:
        """Replace what ``key`` holds (None: nothing); True if the decoded view changed."""
        old = self._entries.pop(key, None)
        if old is None and entry is None:
            return False
        if old is not None:
            self._unindex(key, old)
        if entry is not None and not deleted:
            self._entries[key] = entry
            self._index(key, entry)
        changed = (old.record, old.error) if old else None
        now = (entry.record, entry.error) if entry else None
        if changed != now:
            self._snapshot = None
            self.version += 1
            return True
        return False

    def _unindex(self, key: str, e: _Entry) -> None:
        if e.error is not None:
            self._skipped.pop(key, None)
        elif e.kind == "networks":
            self._networks.pop(str(e.ident), None)
        elif e.kind == "hosts":
            self._hosts.pop(str(e.ident), None)
        elif e.kind == "alive":
            self._alive.pop(str(e.ident), None)
        elif isinstance(e.ident, tuple):
            self._endpoints.pop(e.ident, None)

    def _index(self, key: str, e: _Entry) -> None:
        if e.error is not None:
            self._skipped[key] = e.error
            self.invalid_records += 1
            log.debug("invalid record %s: %s", clip(key), e.error)  # reported by each pass
        elif isinstance(e.record, Network):
            self._networks[e.record.name] = (e.create_revision, e.record)
        elif isinstance(e.record, Host):
            self._hosts[e.record.name] = e.record
        elif isinstance(e.record, Alive):
            self._alive[str(e.ident)] = e.record
        elif isinstance(e.record, Endpoint) and isinstance(e.ident, tuple):
            self._endpoints[e.ident] = (e.create_revision, e.record)

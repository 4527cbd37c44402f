"""Mirrors of the two records that tell an agent how much of the store to follow
(``controller/store/interest.py``): the ``layout`` record (is the placement index complete?) and
one host's placement keys (which networks have an endpoint there).

Each is fed by a ``Watcher`` (``controller/store/watcher.py``) through ``apply`` and
``replace_all``, which say whether what the mirror answers changed; reads are thread-safe.
Keys of other shapes are ignored, never an error: a prefix watch sees whatever a careless
client wrote under the prefix.
"""

from __future__ import annotations

import threading

from controller.model import codec
from controller.model.errors import InvalidRecord
from controller.model.records import check_label
from controller.store import keys
from controller.store.kv import Listing, WatchBatch


class LayoutMirror:
    """Mirror of ``/heddle/v1/layout``: whether the placement index is complete.

    A record that does not decode reads as "not indexed" (the safe, unscoped way) and is kept
    in ``error`` for the agent's problems. Keys that merely start with the layout key are
    ignored (a prefix watch sees them too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._revision = 0
        self.placement = False
        self.error: str | None = None

    @property
    def revision(self) -> int:
        with self._lock:
            return self._revision

    def _set(self, value: bytes | None) -> bool:
        before = (self.placement, self.error)
        self.error = None
        self.placement = False
        if value is not None:
            try:
                self.placement = codec.decode_layout(value)
            except InvalidRecord as exc:
                self.error = f"{keys.LAYOUT}: {exc}"
        return (self.placement, self.error) != before

    def apply(self, batch: WatchBatch) -> bool:
        with self._lock:
            changed = False
            for ev in batch.events:
                if ev.kv.key == keys.LAYOUT and ev.kv.mod_revision > self._revision:
                    changed |= self._set(ev.kv.value if ev.kind == "put" else None)
            self._revision = max(self._revision, batch.revision)
            return changed

    def replace_all(self, listing: Listing) -> bool:
        with self._lock:
            found = [kv.value for kv in listing.items if kv.key == keys.LAYOUT]
            self._revision = listing.revision
            return self._set(found[0] if found else None)


class PlacementMirror:
    """Mirror of ``placement/<host>/``: the networks with at least one endpoint on the host.

    Keys that are not ``placement/<host>/<network>/<id>`` with a valid network name are ignored
    (no endpoint of such a name can exist, so they cannot hide one)."""

    def __init__(self, host: str) -> None:
        self._prefix = keys.placement_of(host)
        self._lock = threading.Lock()
        self._revision = 0
        self._keys: dict[str, str] = {}  # placement key -> network

    @property
    def revision(self) -> int:
        with self._lock:
            return self._revision

    def networks(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._keys.values())

    def _network(self, key: str) -> str | None:
        parts = keys.split_tail(key, self._prefix)
        if len(parts) != 2 or not parts[1]:
            return None
        try:
            check_label(parts[0], "network")
        except InvalidRecord:
            return None
        return parts[0]

    def _put(self, key: str) -> None:
        net = self._network(key)
        if net is not None:
            self._keys[key] = net

    def apply(self, batch: WatchBatch) -> bool:
        with self._lock:
            before = frozenset(self._keys.values())
            for ev in batch.events:
                if ev.kv.mod_revision <= self._revision:
                    continue
                if ev.kind == "put":
                    self._put(ev.kv.key)
                else:
                    self._keys.pop(ev.kv.key, None)
            self._revision = max(self._revision, batch.revision)
            return frozenset(self._keys.values()) != before

    def replace_all(self, listing: Listing) -> bool:
        with self._lock:
            before = frozenset(self._keys.values())
            self._keys.clear()
            for kv in listing.items:
                self._put(kv.key)
            self._revision = listing.revision
            return frozenset(self._keys.values()) != before

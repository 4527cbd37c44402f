"""``heddle store upgrade``: complete the placement index, then tell the agents it is complete.

A store written by an older release holds endpoints without placement keys
(``controller/store/keys.py``), and agents follow all of ``/heddle/v1/`` until
``/heddle/v1/layout`` says ``{"placement": true}`` (``controller/store/interest.py``). This
module makes the index equal to the endpoints and then writes that record:

1. list the endpoints and the placement keys at one revision;
2. put each missing placement key, guarded by its endpoint's ``mod_revision`` (an endpoint
   changed or removed meanwhile is left for the next round), in transactions of at most
   ``CHUNK`` endpoints;
3. delete each stale placement key (no endpoint of that id on that host), guarded the same way;
4. write the layout record; then one more round, for endpoints an older writer added during
   the run.

Idempotent: a second run on a complete index changes nothing. Safe while agents and writers
run: every write is a guarded transaction, and an agent only switches to the scoped watches
after the layout record appears. Run it once every writer (CLI, agents with their Docker
plugin) is of a release that writes placement keys; an older writer still running afterwards
would write endpoints that their host's agent does not see (a rerun indexes them).
Raises ``StoreUnavailable`` (retrying can help; a partial run is safe to repeat).
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.model import codec
from controller.model.errors import InvalidRecord
from controller.store import keys
from controller.store.kv import KV, Compare, Delete, Put, Txn

CHUNK = 40  # endpoints per transaction: etcd's default --max-txn-ops is 128


@dataclass(frozen=True, slots=True)
class UpgradeReport:
    """What one run did: placement keys put and removed, endpoints already indexed, endpoints
    left for a rerun because they changed during it, and whether the layout record was
    written now (False: it was already there)."""

    indexed: int
    removed: int
    already: int
    changed_meanwhile: int
    layout_written: bool


@dataclass(frozen=True, slots=True)
class _Round:
    indexed: int
    removed: int
    already: int
    changed_meanwhile: int


def _round(kv: KV) -> _Round:
    eps = kv.list(keys.ENDPOINTS)
    placed = kv.list(keys.PLACEMENT, revision=eps.revision)
    want: dict[str, tuple[str, int]] = {}  # placement key -> (endpoint key, its mod_revision)
    value: dict[str, bytes] = {}  # placement key -> its value (the interface)
    for item in eps.items:
        try:
            ep = codec.decode_endpoint(item.value)
        except InvalidRecord:
            continue  # no host to index it under; agents skip it anyway
        if keys.endpoint(ep.network, ep.id) != item.key:
            continue  # stored under the wrong key: agents skip it
        key = keys.placement(ep.host, ep.network, ep.id)
        want[key] = (item.key, item.mod_revision)
        value[key] = codec.encode_placement(ep).encode()
    have = {item.key: item.mod_revision for item in placed.items}
    missing = sorted(k for k in want if k not in have)
    stale = sorted(k for k in have if k not in want)
    lost = 0
    for i in range(0, len(missing), CHUNK):
        lost += _commit(kv, [(k, want[k], value[k]) for k in missing[i : i + CHUNK]])
    stale_guards = {k: _endpoint_key_of(k) for k in stale}
    for i in range(0, len(stale), CHUNK):
        chunk = stale[i : i + CHUNK]
        lost += _commit(kv, [(k, (stale_guards[k], have[k]), None) for k in chunk])
    return _Round(len(missing), len(stale), len(want) - len(missing), lost)


def _endpoint_key_of(placement_key: str) -> str:
    """``placement/<host>/<net>/<id>`` -> ``endpoints/<net>/<id>`` (pure; any shape)."""
    tail = keys.split_tail(placement_key, keys.PLACEMENT)
    return keys.ENDPOINTS + "/".join(tail[1:])


def _commit(kv: KV, items: list[tuple[str, tuple[str, int], bytes | None]]) -> int:
    """Put (with their value) or delete (``None``) placement keys in one guarded transaction;
    on a lost guard, one by one. Returns how many were left because their endpoint changed
    meanwhile.

    A put is guarded by its endpoint's ``mod_revision``; a delete by the placement key's own
    ``mod_revision`` and by its endpoint still being what the listing saw (absent, or another
    host's)."""

    def txn(batch: list[tuple[str, tuple[str, int], bytes | None]]) -> Txn:
        compares: list[Compare] = []
        ops: list[Put | Delete] = []
        for key, (guard_key, rev), put in batch:
            if put is not None:
                compares.append(Compare(guard_key, "mod", "=", rev))
                ops.append(Put(key, put))
            else:
                compares.append(Compare(key, "mod", "=", rev))
                ops.append(Delete(key))
        return Txn(tuple(compares), tuple(ops))

    if not items or kv.commit(txn(items)).succeeded:
        return 0
    lost = 0
    for item in items:
        key, (guard_key, _rev), put = item
        if put is None:  # the endpoint may have come back meanwhile: check it
            ep = kv.get(guard_key)
            if ep is not None and _host_of(ep.value) == keys.split_tail(key, keys.PLACEMENT)[0]:
                lost += 1
                continue
        lost += 0 if kv.commit(txn([item])).succeeded else 1
    return lost


def _host_of(value: bytes) -> str | None:
    try:
        return codec.decode_endpoint(value).host
    except InvalidRecord:
        return None


def upgrade(kv: KV) -> UpgradeReport:
    """Index every endpoint, remove stale placement keys, write the layout record, index once
    more. See the module docstring."""
    first = _round(kv)
    current = kv.get(keys.LAYOUT)
    written = False
    try:
        indexed = current is not None and codec.decode_layout(current.value)
    except InvalidRecord:
        indexed = False
    if not indexed:
        layout = Put(keys.LAYOUT, codec.encode_layout(True).encode())
        if current is None:
            guard = Compare(keys.LAYOUT, "create", "=", 0)
        else:
            guard = Compare(keys.LAYOUT, "mod", "=", current.mod_revision)
        written = kv.commit(Txn((guard,), (layout,))).succeeded
    second = _round(kv)
    return UpgradeReport(
        first.indexed + second.indexed,
        first.removed + second.removed,
        first.already,
        second.changed_meanwhile,
        written,
    )

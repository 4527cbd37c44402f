"""``KernelFilters``: the kernel backend's nftables tables, read and written through one
libnftables context (``controller/dataplane/nftables.py``).

What it reads is remembered for ``ttl`` seconds (the agent's endpoint TTL): reading the tables
costs about 1 ms, and every op this driver applies updates what it remembers exactly, so an
event-driven pass pays for the filters only when they change. The tables' shapes are
``controller/model/nft_filter.py`` (``inet heddle``) and ``controller/model/nft_guards.py``
(``netdev heddle``, one chain per guarded port). Not thread-safe.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

from controller.dataplane.backend import OpFailed
from controller.dataplane.nftables import Nft, NftError
from controller.model.nft_filter import (
    LIST_TABLES,
    SPOOF_DROPPED,
    VXLAN_DROPPED,
    ours,
    render_drop_bridge,
    render_list,
    render_sync,
)
from controller.model.nft_guards import render_guard, render_unguard
from controller.model.nft_parse import FilterListing, parse_tables
from controller.plan.kernel_ops import DropBridgeGuards, GuardPort, SyncFilters, UnguardPort

FilterOp = SyncFilters | GuardPort | UnguardPort | DropBridgeGuards


class KernelFilters:
    """heddle's nftables tables in namespace ``netns`` (``None``: the caller's)."""

    def __init__(self, netns: str | None, ttl: float = 0.0) -> None:
        self._nft = Nft(netns)
        self.ttl = ttl
        self._kept: tuple[float, FilterListing] | None = None  # (when, what the tables hold)

    def close(self) -> None:
        """Free the libnftables context. Idempotent."""
        self._nft.close()

    def read(self) -> FilterListing:
        """What the tables hold: remembered if read or written less than ``ttl`` ago.

        Unreadable (libnftables missing, no permission) reads as "no filters": the planner then
        plans ``SyncFilters`` and the guards, which fail with the reason on every pass
        (reported in the status) while the rest of the data plane still converges."""
        now = time.monotonic()
        if self._kept is not None and now - self._kept[0] < self.ttl:
            return self._kept[1]
        listing = self._read()
        self._kept = (now, listing) if listing.spec is not None else None
        return listing

    def _read(self) -> FilterListing:
        try:
            present = ours(self._nft.run(LIST_TABLES))
            objects = [obj for family in present for obj in self._nft.run(render_list(family))]
        except NftError:  # the failing ops say why, once per pass
            return FilterListing(None)
        return parse_tables(objects)

    def drops(self) -> Mapping[str, int]:
        """The drop counters by reason (``vxlan``, ``spoof``), read now; ``{}`` before the
        tables exist."""
        counters = self._read().drops or {}
        names = {VXLAN_DROPPED: "vxlan", SPOOF_DROPPED: "spoof"}
        return {names[k]: v for k, v in counters.items() if k in names}

    def apply(self, op: FilterOp) -> None:
        """Apply one op in one nftables transaction (so a refused one changes nothing) and
        update what is remembered. Raises ``OpFailed`` with nft's reason; retrying helps only
        once what it conflicted with changed (a port that does not exist yet)."""
        kept, self._kept = self._kept, None
        try:
            self._write(op)
        except NftError as exc:
            raise OpFailed(f"nftables: {exc}") from exc
        if kept is not None:
            self._kept = (time.monotonic(), _after(kept[1], op))

    def _write(self, op: FilterOp) -> None:
        match op:
            case SyncFilters():
                self._nft.run(render_sync(op.spec, op.stale_vnis))
            case GuardPort():
                self._nft.run(render_guard(op.port, op.guards))
            case UnguardPort():
                self._absent_is_success(render_unguard(op.port), op.port)
            case DropBridgeGuards():
                self._absent_is_success(render_drop_bridge(), None)

    def _absent_is_success(self, batch: dict[str, object], port: str | None) -> None:
        """Run a deleting ``batch`` (of ``port``'s chain, or with ``None`` of the old bridge
        table); if refused, succeed when what it deletes is gone (a port's chain that Linux
        6.1 deleted with its device, a table already dropped)."""
        try:
            self._nft.run(batch)
        except NftError:
            listing = self._read()
            gone = port not in listing.guards if port is not None else not listing.bridge
            if not gone:
                raise


def _after(listing: FilterListing, op: FilterOp) -> FilterListing:
    """``listing`` once ``op`` succeeded, as a reading would show it. Pure."""
    match op:
        case SyncFilters():
            return dataclasses.replace(listing, spec=op.spec, vni_sets=())
        case GuardPort():
            return dataclasses.replace(listing, guards={**listing.guards, op.port: op.guards})
        case UnguardPort():
            guards = {p: g for p, g in listing.guards.items() if p != op.port}
            return dataclasses.replace(listing, guards=guards)
        case DropBridgeGuards():
            return dataclasses.replace(listing, bridge=False)

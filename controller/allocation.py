"""The one address-allocation path: pick a free address of a network and claim it in the same
etcd transaction as whatever the address is for.

Every writer allocates here: the CLI's ``endpoint create`` (``controller/desired.py``: the
endpoint record goes into the claiming transaction) and the Docker plugin's reservations and
gateways (``controller/plugin/ipam_driver.py``: only the IPAM key). The rule a hand-written
client must follow (README, the public schema) is the transaction below: compare the network
record's ``mod_revision`` (no address is claimed in a network being removed or replaced) and
``create_revision == 0`` on ``ipam/<network>/<ip>``, then put the IPAM key with its owner.

Candidates: the lowest address this allocator knows to be free. After a lost race the
allocator moves to a random point of the pool and goes on from there, also for its next
allocations (``Pools.scatter``): several allocators at once then work in different parts of
the pool instead of fighting over the same lowest addresses, where each round has one winner
and n-1 losers.

What an allocator knows: a long-lived one (the Docker plugin, a ``DesiredState`` used for many
allocations) keeps a ``Pools`` cache of each network's taken addresses, read once (one range
read, which grows with the pool) and then kept by its own claims, releases and lost races, so
an allocation costs one transaction instead of a listing plus a transaction. The cache is only
a hint: the transaction decides. It is read afresh when the network record changed, after
``RELIST_AFTER`` lost races, and before a pool is declared exhausted; so an address released by
another writer is found again at the latest then (it is not necessarily the lowest free one
meanwhile).
"""

from __future__ import annotations

import ipaddress
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain

from controller import ipam
from controller.model import codec
from controller.model.errors import Exhausted
from controller.model.records import Network
from controller.store import keys
from controller.store.kv import KV, Compare, Put, Txn

#: After this many lost races for one allocation the allocator re-lists the pool.
RELIST_AFTER = 64
#: Every this many lost races the caller's ``on_lost`` checks that only the address was taken
#: (a transaction that can never succeed, e.g. for a removed network, costs this many tries).
CHECK_EVERY = 8


@dataclass(frozen=True, slots=True)
class Claim:
    """What claiming address ``ip`` writes, besides its IPAM key (whose value is ``owner``):
    more compares and puts, built per candidate (an endpoint's MAC derives from its address)."""

    owner: str
    compares: Callable[[str], tuple[Compare, ...]] = field(default=lambda ip: ())
    puts: Callable[[str], tuple[Put, ...]] = field(default=lambda ip: ())


def try_claim(kv: KV, net: Network, net_revision: int, ip: str, claim: Claim) -> bool:
    """One claiming transaction for ``ip``; True if it won. Raises ``StoreUnavailable``."""
    txn = Txn(
        compares=(
            Compare(keys.network(net.name), "mod", "=", net_revision),
            Compare(keys.ipam(net.name, ip), "create", "=", 0),
            *claim.compares(ip),
        ),
        success=(
            Put(keys.ipam(net.name, ip), codec.encode_owner(claim.owner).encode()),
            *claim.puts(ip),
        ),
    )
    return kv.commit(txn).succeeded


def taken(kv: KV, net: Network) -> set[str]:
    """The addresses of ``net`` that have an IPAM key (one range read)."""
    return {item.key.rsplit("/", 1)[1] for item in kv.list(keys.ipam_of(net.name)).items}


def _int(ip: str) -> int | None:
    try:
        return int(ipaddress.IPv4Address(ip))
    except ValueError:  # a foreign key under ipam/: it takes no address of ours
        return None


@dataclass(slots=True)
class _Pool:
    revision: int
    taken: set[int]
    low: int  # every usable address below this one is taken
    cursor: int | None = None  # after a lost race: where this allocator looks first


class Pools:
    """Per network: the taken addresses an allocator last knew (as integers), for the network
    record's ``mod_revision`` it read them under, and the lowest address that may be free (so
    finding the next candidate does not walk the taken ones). See the module docstring.
    Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, _Pool] = {}

    def _get(self, net: Network, net_revision: int) -> _Pool | None:
        pool = self._pools.get(net.name)
        return pool if pool is not None and pool.revision == net_revision else None

    def load(self, kv: KV, net: Network, net_revision: int) -> bool:
        """List the pool unless it is known for this revision; True if it was listed."""
        with self._lock:
            if self._get(net, net_revision) is not None:
                return False
        ints = {v for v in map(_int, taken(kv, net)) if v is not None}
        with self._lock:
            self._pools[net.name] = _Pool(net_revision, ints, 0)
        return True

    def candidates(self, net: Network, net_revision: int) -> Iterator[str]:
        """Free addresses as known: from the cursor if a race was lost before (wrapping
        around), else the lowest first (raising the low mark over taken ones)."""
        lo = int(net.network.network_address) + 1
        hi = int(net.network.broadcast_address) - 1
        gateway = _int(net.gateway) if net.gateway is not None else None
        with self._lock:
            pool = self._get(net, net_revision)
            if pool is None:
                return
            low = max(lo, pool.low)
            start = low if pool.cursor is None else min(max(pool.cursor, low), hi)
        walk = (
            range(start, hi + 1) if start == low else chain(range(start, hi + 1), range(low, start))
        )
        first = start == low
        for v in walk:
            with self._lock:
                free = v not in pool.taken and v != gateway
                if first and free:
                    pool.low = max(pool.low, v)
            if free:
                first = False
                yield str(ipaddress.IPv4Address(v))

    def scatter(self, net: Network, net_revision: int, rng: random.Random) -> None:
        """A race was lost: look somewhere else in the pool from now on (a random point), so
        that several allocators at once stop fighting over the same lowest addresses."""
        lo = int(net.network.network_address) + 1
        hi = int(net.network.broadcast_address) - 1
        with self._lock:
            pool = self._get(net, net_revision)
            if pool is not None:
                pool.cursor = rng.randint(lo, hi)

    def won(self, net: Network, net_revision: int, ip: str) -> None:
        """Claimed ``ip``: taken, and an allocator that scattered continues right after it."""
        v = _int(ip)
        with self._lock:
            pool = self._get(net, net_revision)
            if pool is not None and v is not None:
                pool.taken.add(v)
                if pool.cursor is not None:
                    pool.cursor = v + 1

    def mark(self, net: Network, net_revision: int, ip: str) -> None:
        """Record a claim or a lost race on ``ip``: taken either way."""
        v = _int(ip)
        with self._lock:
            pool = self._get(net, net_revision)
            if pool is not None and v is not None:
                pool.taken.add(v)

    def release(self, network: str, ip: str) -> None:
        """This allocator freed ``ip`` of ``network``: it is a candidate again at once."""
        v = _int(ip)
        with self._lock:
            pool = self._pools.get(network)
            if pool is not None and v is not None:
                pool.taken.discard(v)
                pool.low = min(pool.low, v)

    def forget(self, net: Network) -> None:
        with self._lock:
            self._pools.pop(net.name, None)


def allocate(
    kv: KV,
    net: Network,
    net_revision: int,
    claim: Claim,
    on_lost: Callable[[str], None],
    pools: Pools | None = None,
) -> str:
    """Claim a free address of ``net`` (see the module docstring) and return it.

    ``on_lost(ip)`` is called after every ``CHECK_EVERY``-th lost race and when every known
    candidate was lost: it must raise when the transaction failed for another reason than the
    address (the network was removed, an endpoint id is taken), or the loop would walk the
    whole pool. ``pools``: the allocator's cache (None: list the pool every time). Raises
    ``Exhausted`` when no address is free, ``StoreUnavailable`` when etcd cannot be reached."""
    pools = pools if pools is not None else Pools()
    rng = random.Random()
    while True:
        fresh = pools.load(kv, net, net_revision)
        lost: list[str] = []
        while len(lost) < RELIST_AFTER:
            candidate = next(pools.candidates(net, net_revision), None)
            if candidate is None:
                break
            if try_claim(kv, net, net_revision, candidate, claim):
                pools.won(net, net_revision, candidate)
                return candidate
            pools.mark(net, net_revision, candidate)
            lost.append(candidate)
            if len(lost) % CHECK_EVERY == 0:
                on_lost(candidate)
            pools.scatter(net, net_revision, rng)
        else:
            pools.forget(net)  # many lost races: list again
            continue
        if lost:  # every known candidate was lost: make sure it was over the addresses
            on_lost(lost[-1])
        if not fresh:  # what looked full may hold addresses released meanwhile
            pools.forget(net)
            continue
        raise Exhausted(
            f"network {net.name} ({net.subnet}) has no free address left "
            f"({ipam.pool_size(net)} usable, all in use)"
        )

"""The one address-allocation path: pick a free address of a network and claim it in the same
etcd transaction as whatever the address is for.

Every writer allocates here: the CLI's ``endpoint create`` (``controller/desired.py``: the
endpoint record goes into the claiming transaction) and the Docker plugin's reservations and
gateways (``controller/plugin/ipam_driver.py``: only the IPAM key). The rule a hand-written
client must follow (README, the public schema) is the transaction below: compare the network
record's ``mod_revision`` (no address is claimed in a network being removed or replaced) and
``create_revision == 0`` on ``ipam/<network>/<ip>`` for each address (one per family of a
dual-stack network, in one transaction), then put the IPAM keys with their owner.

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


Addresses = tuple[str, ...]
"""One address per family of a network, IPv4 first: what one endpoint claims at once."""


@dataclass(frozen=True, slots=True)
class Claim:
    """What claiming ``ips`` writes, besides their IPAM keys (whose values are ``owner``):
    more compares and puts, built per candidate (an endpoint's MAC derives from its address)."""

    owner: str
    compares: Callable[[Addresses], tuple[Compare, ...]] = field(default=lambda ips: ())
    puts: Callable[[Addresses], tuple[Put, ...]] = field(default=lambda ips: ())


def try_claim(kv: KV, net: Network, net_revision: int, ips: Addresses, claim: Claim) -> bool:
    """One claiming transaction for ``ips`` (an address of each family, all or none); True if
    it won. Raises ``StoreUnavailable``."""
    txn = Txn(
        compares=(
            Compare(keys.network(net.name), "mod", "=", net_revision),
            *(Compare(keys.ipam(net.name, ip), "create", "=", 0) for ip in ips),
            *claim.compares(ips),
        ),
        success=(
            *(Put(keys.ipam(net.name, ip), codec.encode_owner(claim.owner).encode()) for ip in ips),
            *claim.puts(ips),
        ),
    )
    return kv.commit(txn).succeeded


def taken(kv: KV, net: Network) -> set[str]:
    """The addresses of ``net`` that have an IPAM key (one range read; both families)."""
    return {item.key.rsplit("/", 1)[1] for item in kv.list(keys.ipam_of(net.name)).items}


def _int(ip: str) -> tuple[bool, int] | None:
    """(IPv6?, the address as an integer); None for a foreign key under ipam/."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:  # a foreign key under ipam/: it takes no address of ours
        return None
    return addr.version == 6, int(addr)


@dataclass(slots=True)
class _Pool:
    revision: int
    taken: set[int]
    low: int  # every usable address below this one is taken
    cursor: int | None = None  # after a lost race: where this allocator looks first


class Pools:
    """Per network and family: the taken addresses an allocator last knew (as integers), for
    the network record's ``mod_revision`` it read them under, and the lowest address that may
    be free (so finding the next candidate does not walk the taken ones). See the module
    docstring. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, bool], _Pool] = {}

    def _get(self, net: Network, net_revision: int, six: bool) -> _Pool | None:
        pool = self._pools.get((net.name, six))
        return pool if pool is not None and pool.revision == net_revision else None

    def load(self, kv: KV, net: Network, net_revision: int) -> bool:
        """List the pools unless they are known for this revision; True if they were listed."""
        with self._lock:
            if all(self._get(net, net_revision, six) is not None for six in ipam.families(net)):
                return False
        ints = [v for v in map(_int, taken(kv, net)) if v is not None]
        with self._lock:
            for six in ipam.families(net):
                mine = {i for f, i in ints if f == six}
                self._pools[net.name, six] = _Pool(net_revision, mine, 0)
        return True

    def candidates(self, net: Network, net_revision: int, six: bool) -> Iterator[str]:
        """Free addresses of one family as known: from the cursor if a race was lost before
        (wrapping around), else the lowest first (raising the low mark over taken ones)."""
        lo, hi, gateway = ipam.span(net, six)
        with self._lock:
            pool = self._get(net, net_revision, six)
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
                yield ipam.text(v, six)

    def scatter(self, net: Network, net_revision: int, rng: random.Random) -> None:
        """A race was lost: look somewhere else in the pools from now on (a random point), so
        that several allocators at once stop fighting over the same lowest addresses."""
        with self._lock:
            for six in ipam.families(net):
                lo, hi, _ = ipam.span(net, six)
                pool = self._get(net, net_revision, six)
                if pool is not None:
                    pool.cursor = rng.randint(lo, hi)

    def won(self, net: Network, net_revision: int, ip: str) -> None:
        """Claimed ``ip``: taken, and an allocator that scattered continues right after it."""
        v = _int(ip)
        with self._lock:
            pool = self._get(net, net_revision, v[0]) if v is not None else None
            if pool is not None and v is not None:
                pool.taken.add(v[1])
                if pool.cursor is not None:
                    pool.cursor = v[1] + 1

    def mark(self, net: Network, net_revision: int, ip: str) -> None:
        """Record a claim or a lost race on ``ip``: taken either way. (A lost race of a
        dual-stack claim marks both addresses, though one may be free: a hint errs towards
        taken, and a re-list corrects it.)"""
        v = _int(ip)
        with self._lock:
            pool = self._get(net, net_revision, v[0]) if v is not None else None
            if pool is not None and v is not None:
                pool.taken.add(v[1])

    def release(self, network: str, ip: str) -> None:
        """This allocator freed ``ip`` of ``network``: it is a candidate again at once."""
        v = _int(ip)
        with self._lock:
            pool = self._pools.get((network, v[0])) if v is not None else None
            if pool is not None and v is not None:
                pool.taken.discard(v[1])
                pool.low = min(pool.low, v[1])

    def forget(self, net: Network) -> None:
        with self._lock:
            for six in (False, True):
                self._pools.pop((net.name, six), None)


def allocate(
    kv: KV,
    net: Network,
    net_revision: int,
    claim: Claim,
    on_lost: Callable[[Addresses], None],
    pools: Pools | None = None,
    families: tuple[bool, ...] | None = None,
) -> Addresses:
    """Claim a free address of each family of ``net`` (see the module docstring) in one
    transaction and return them, IPv4 first.

    ``on_lost(ips)`` is called after every ``CHECK_EVERY``-th lost race and when every known
    candidate was lost: it must raise when the transaction failed for another reason than the
    addresses (the network was removed, an endpoint id is taken), or the loop would walk the
    whole pool. ``pools``: the allocator's cache (None: list the pool every time).
    ``families``: claim these only (``True`` IPv6; default every family of ``net``): Docker
    reserves each of its pools' addresses on its own. Raises
    ``Exhausted`` when a family has no address free, ``StoreUnavailable`` when etcd cannot be
    reached."""
    pools = pools if pools is not None else Pools()
    rng = random.Random()
    while True:
        fresh = pools.load(kv, net, net_revision)
        lost: list[Addresses] = []
        while len(lost) < RELIST_AFTER:
            found = [next(pools.candidates(net, net_revision, six), None)
                     for six in (families or ipam.families(net))]  # fmt: skip
            candidate = tuple(ip for ip in found if ip is not None)
            if len(candidate) != len(found):
                break
            if try_claim(kv, net, net_revision, candidate, claim):
                for ip in candidate:
                    pools.won(net, net_revision, ip)
                return candidate
            for ip in candidate:
                pools.mark(net, net_revision, ip)
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
            f"network {net.name} ({net.subnets}) has no free address left "
            f"({ipam.pool_size(net)} usable, all in use)"
        )

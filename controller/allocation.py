"""The one address-allocation path: pick a free address of a network and claim it in the same
etcd transaction as whatever the address is for.

Every writer allocates here: the CLI's ``endpoint create`` (``controller/desired.py``: the
endpoint record goes into the claiming transaction) and the Docker plugin's reservations and
gateways (``controller/plugin/ipam_driver.py``: only the IPAM key). The rule a hand-written
client must follow (README, the public schema) is the transaction below: compare the network
record's ``mod_revision`` (no address is claimed in a network being removed or replaced) and
``create_revision == 0`` on ``ipam/<network>/<ip>``, then put the IPAM key with its owner.

Candidates: the lowest address this allocator knows to be free first; after a lost race a
random one among the next few free ones (``ipam.contention_order``), so contending allocators
stop walking the same sequence in lockstep.

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

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from controller import ipam
from controller.model import codec
from controller.model.errors import Exhausted
from controller.model.records import Network
from controller.store import keys
from controller.store.kv import KV, Compare, Put, Txn

#: After this many lost races for one allocation the allocator re-lists the pool.
RELIST_AFTER = 64
#: Every this many lost races the caller's ``on_lost`` checks that only the address was taken.
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


class Pools:
    """Per network: the taken addresses an allocator last knew, for the network record's
    ``mod_revision`` it read them under (see the module docstring). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: dict[str, tuple[int, set[str]]] = {}

    def known(self, net: Network, net_revision: int) -> set[str] | None:
        """A copy of what is known for this revision of ``net`` (None: nothing)."""
        with self._lock:
            got = self._taken.get(net.name)
            return set(got[1]) if got is not None and got[0] == net_revision else None

    def store(self, net: Network, net_revision: int, addresses: set[str]) -> None:
        with self._lock:
            self._taken[net.name] = (net_revision, set(addresses))

    def release(self, network: str, ip: str) -> None:
        """This allocator freed ``ip`` of ``network``: it is a candidate again at once."""
        with self._lock:
            got = self._taken.get(network)
            if got is not None:
                got[1].discard(ip)

    def forget(self, net: Network) -> None:
        with self._lock:
            self._taken.pop(net.name, None)

    def mark(self, net: Network, net_revision: int, ip: str) -> None:
        """Record a claim or a lost race on ``ip``: taken either way."""
        with self._lock:
            got = self._taken.get(net.name)
            if got is not None and got[0] == net_revision:
                got[1].add(ip)


def allocate(
    kv: KV,
    net: Network,
    net_revision: int,
    claim: Claim,
    on_lost: Callable[[str], None],
    pools: Pools | None = None,
) -> str:
    """Claim a free address of ``net`` (see the module docstring) and return it.

    ``on_lost(ip)`` is called after the first and then every ``CHECK_EVERY``-th lost race: it
    must raise when the transaction failed for another reason than the address (the network
    was removed, an endpoint id is taken), or the loop would walk the whole pool. ``pools``:
    the allocator's cache (None: list the pool every time). Raises ``Exhausted`` when no
    address is free, ``StoreUnavailable`` when etcd cannot be reached."""
    pools = pools if pools is not None else Pools()
    while True:
        known = pools.known(net, net_revision)
        fresh = known is None
        if known is None:
            known = taken(kv, net)
            pools.store(net, net_revision, known)
        order = ipam.contention_order(ipam.free_addresses(net, known))
        for lost, candidate in enumerate(order, start=1):
            won = try_claim(kv, net, net_revision, candidate, claim)
            pools.mark(net, net_revision, candidate)
            if won:
                return candidate
            if lost % CHECK_EVERY == 1:
                on_lost(candidate)
            if lost >= RELIST_AFTER:
                break
        else:
            if not fresh:  # what looked full may hold addresses released meanwhile
                pools.forget(net)
                continue
            raise Exhausted(
                f"network {net.name} ({net.subnet}) has no free address left "
                f"({ipam.pool_size(net)} usable, all in use)"
            )
        pools.forget(net)  # many lost races: list again

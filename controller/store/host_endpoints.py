"""The endpoint records of one host that may take a given interface, found through the
placement index.

Why: a writer that refuses a second endpoint for the same interface of a host
(``controller/desired.py``) read and decoded every endpoint of the cluster for it: O(cluster)
per ``heddle endpoint create`` (``bench/bench_endpoint_create.py``: 46 ms at 2,000 endpoints,
178 ms at 10,000). Now it reads ``placement/<host>/`` (``controller/store/keys.py``) in the round
trip the writer makes anyway. A placement key's value names its endpoint's interface
(``codec.decode_placement``), so only the records whose key names this interface, or says
nothing (written by an older release), are read: none in the common case (5.6 ms at 2,000
endpoints, 4.6 ms at 10,000, with a few hundred on the host).

Pure reads: nothing here writes, and nothing is cached.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.model import codec
from controller.model.errors import InvalidRecord
from controller.store import keys
from controller.store.kv import KV, MAX_READS, KeyValue, Listing, Read


def read_with_host_endpoints(
    kv: KV, first: Sequence[Read], host: str, interface: tuple[str | None, str]
) -> tuple[tuple[Listing, ...], tuple[KeyValue, ...]]:
    """``first``'s listings (read in the same round trip as the layout record and ``host``'s
    placement keys, so at one revision) and the endpoint records of ``host`` that may take
    ``interface`` (``(netns, ifname)``).

    With the index complete (the layout record says so) those are the records whose placement
    key names ``interface`` or does not say: one more round trip per ``MAX_READS`` of them,
    none when there are none; records removed between the two reads are left out. Without it
    (a store ``heddle store upgrade`` has not indexed yet, or a layout record that does not
    decode) every endpoint record is returned. Either way the caller decides from each
    record itself (its ``host`` included). Raises ``StoreUnavailable``."""
    got = kv.read([*first, Read(keys.LAYOUT), Read(keys.placement_of(host), prefix=True)])
    mine, (layout, placed) = got[: len(first)], got[len(first) :]
    if not _indexed(layout):
        return mine, kv.list(keys.ENDPOINTS).items
    wanted = []
    for item in placed.items:
        tail = keys.split_tail(item.key, keys.placement_of(host))
        if len(tail) != 2:  # no key of this layout: nobody's endpoint
            continue
        says = codec.decode_placement(item.value)
        if says is None or says == interface:
            wanted.append(Read(keys.endpoint(tail[0], tail[1])))
    records: list[KeyValue] = []
    for at in range(0, len(wanted), MAX_READS):
        for listing in kv.read(wanted[at : at + MAX_READS]):
            records += listing.items
    return mine, tuple(records)


def _indexed(layout: Listing) -> bool:
    if not layout.items:
        return False
    try:
        return codec.decode_layout(layout.items[0].value)
    except InvalidRecord:
        return False

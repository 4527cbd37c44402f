"""The transaction ops that write or remove one endpoint: its record and its placement key,
always together. Pure.

Every writer of endpoints (the CLI's ``controller/desired.py``, the Docker plugin's
``controller/plugin/network_driver.py``, ``heddle store upgrade``) builds its transactions from
these, so no writer can put an endpoint its host's agent never hears of. The placement key
(``controller/store/keys.py``: ``placement/<host>/<network>/<id>``) is what an agent follows to
learn which networks have an endpoint on its host (``controller/store/interest.py``); the README
states the rule for hand-written clients.
"""

from __future__ import annotations

from controller.model import codec
from controller.model.records import Endpoint
from controller.store import keys
from controller.store.kv import Delete, Put


def put_endpoint(ep: Endpoint) -> tuple[Put, Put]:
    """Write ``ep``'s record and its placement key, whose value names the interface it takes
    (``codec.encode_placement``; for a new endpoint, in one transaction)."""
    return (
        Put(keys.endpoint(ep.network, ep.id), codec.encode_endpoint(ep).encode()),
        Put(keys.placement(ep.host, ep.network, ep.id), codec.encode_placement(ep).encode()),
    )


def delete_endpoint(network: str, endpoint_id: str, host: str | None) -> tuple[Delete, ...]:
    """Remove an endpoint's record and (its host known) its placement key.

    ``host`` None: the stored record could not be decoded, so its placement key (if any) is
    unknown; ``heddle store upgrade`` removes such a stale key later. A stale placement key
    costs its host one idle watch, never a wrong data plane."""
    record = Delete(keys.endpoint(network, endpoint_id))
    if host is None:
        return (record,)
    return (record, Delete(keys.placement(host, network, endpoint_id)))

"""``Made``: what this plugin's CreateEndpoint wrote, remembered until DeleteEndpoint.

Why: dockerd calls the plugin some nine times per ``docker run`` and each call waited for etcd;
three of them (EndpointOperInfo twice, and DeleteEndpoint's two reads) only re-read what
CreateEndpoint had just written. With what it wrote and the revision it wrote it at, those
calls need no read:

* EndpointOperInfo answers from it (informational, shown by ``docker inspect``);
* Join takes the EndpointID mapping from it (it still checks the endpoint record exists);
* DeleteEndpoint deletes in one transaction guarded by that revision (``mod =`` on both keys
  CreateEndpoint wrote); any change since then fails the guard, and the handler falls back to
  reading, as without the memo.

So the memo saves reads and never decides anything etcd does not confirm. Bounded (the
oldest entries go first); thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from controller.plugin.mapping import DockerEndpoint

LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Made:
    """One endpoint CreateEndpoint wrote: its mapping, address, MAC and the txn's revision."""

    mapping: DockerEndpoint
    ip: str
    mac: str
    revision: int


class MadeMemo:
    """Docker EndpointID -> ``Made``; see the module docstring."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Made] = OrderedDict()

    def put(self, endpoint_id: str, made: Made) -> None:
        with self._lock:
            self._items[endpoint_id] = made
            self._items.move_to_end(endpoint_id)
            while len(self._items) > self._limit:
                self._items.popitem(last=False)

    def get(self, endpoint_id: str) -> Made | None:
        with self._lock:
            return self._items.get(endpoint_id)

    def pop(self, endpoint_id: str) -> Made | None:
        with self._lock:
            return self._items.pop(endpoint_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

"""A coalescing wake-up: any number of ``fire()`` calls before a ``wait()`` wake it once.

Events from the watcher only *wake* the reconciler; they never carry the work, so losing the
detail of which key changed is fine and bursts of events collapse into one pass.

Each wake says whether it may be *desired-only*: ``fire_desired()`` (the watcher: records in
etcd changed, the data plane did not) lets the reconciler skip observing the data plane when
this host's view did not change, while ``fire()`` (anyone else: an OVS restart, shutdown)
always asks for a full pass. Coalescing keeps the strongest request.
"""

from __future__ import annotations

import threading
import time
from enum import Enum


class Wake(Enum):
    """Why ``wait`` returned."""

    TIMEOUT = "timeout"  # nothing fired: the periodic resync
    DESIRED = "desired"  # only desired-state changes (``fire_desired``)
    FULL = "full"  # at least one ``fire``


class Trigger:
    """Thread-safe; ``fire`` and ``fire_desired`` never block. ``fired_at``: when (monotonic)
    the first fire that ended the last ``wait`` came (None: a timeout), so a pass can say how
    long the change waited for it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._full = False
        self._first: float | None = None  # monotonic time of the first fire since the last wait
        self.fired_at: float | None = None  # ... of the fire that ended the last wait

    def _note(self) -> None:
        with self._lock:
            if self._first is None:
                self._first = time.monotonic()

    def fire(self) -> None:
        """Wake for a full pass (the data plane may have changed under us)."""
        with self._lock:
            self._full = True
        self._note()
        self._event.set()

    def fire_desired(self) -> None:
        """Wake because desired state changed; the data plane is as the last pass left it."""
        self._note()
        self._event.set()

    def wait(self, timeout: float | None) -> Wake:
        """Block until fired or ``timeout``; say why, and re-arm."""
        fired = self._event.wait(timeout)
        with self._lock:
            self._event.clear()
            full, self._full = self._full, False
            self.fired_at, self._first = self._first, None
        if not fired and not full:
            return Wake.TIMEOUT
        return Wake.FULL if full else Wake.DESIRED

"""A coalescing wake-up: any number of ``fire()`` calls before a ``wait()`` wake it once.

Events from the watcher only *wake* the reconciler; they never carry the work, so losing the
detail of which key changed is fine and bursts of events collapse into one pass.
"""

from __future__ import annotations

import threading


class Trigger:
    """Thread-safe; ``fire`` never blocks."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def fire(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        """Block until fired or ``timeout``; returns whether it was fired, and re-arms."""
        fired = self._event.wait(timeout)
        self._event.clear()
        return fired

"""Liveness and readiness of an agent, as ``/healthz`` and ``/readyz`` report them.

Alive: the reconciler thread is running (a dead one would leave the process up but the data
plane unattended: that is what a supervisor should restart). Ready: a full pass has succeeded
(the data plane matches etcd as of some revision) *and* etcd answered within ``grace`` seconds
(the membership keepalive talks to etcd every few seconds, so a longer silence means the agent
cannot see changes). Not ready is not a reason to restart: the data plane is left as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Probe:
    """One health answer: ``ok`` and why."""

    ok: bool
    reason: str


class Health:
    """Answers from the callables it is given; thread-safe if they are. Never raises."""

    def __init__(
        self,
        worker_alive: Callable[[], bool],
        first_pass_done: Callable[[], bool],
        etcd_contact: Callable[[], float | None],
        grace: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._worker_alive = worker_alive
        self._first_pass_done = first_pass_done
        self._etcd_contact = etcd_contact
        self._grace = grace
        self._clock = clock

    def live(self) -> Probe:
        if not self._worker_alive():
            return Probe(False, "the reconciler thread is not running")
        return Probe(True, "alive")

    def ready(self) -> Probe:
        live = self.live()
        if not live.ok:
            return live
        if not self._first_pass_done():
            return Probe(False, "no successful pass yet")
        contact = self._etcd_contact()
        if contact is None:
            return Probe(False, "etcd has not answered yet")
        silent = self._clock() - contact
        if silent > self._grace:
            return Probe(False, f"etcd has not answered for {silent:.0f} s")
        return Probe(True, "ready")

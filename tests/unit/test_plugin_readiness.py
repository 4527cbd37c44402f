"""LinkReadiness (Join's wait for the agent) with a fake probe: bounded, woken by notify()."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from controller.plugin.readiness import LinkReadiness


class Flag:
    def __init__(self) -> None:
        self.ready: set[tuple[str, str]] = set()
        self.calls = 0

    def __call__(self, network: str, endpoint_id: str) -> bool:
        self.calls += 1
        return (network, endpoint_id) in self.ready


def test_ready_at_once() -> None:
    flag = Flag()
    flag.ready.add(("blue", "e1"))
    assert LinkReadiness(flag)("blue", "e1", 5.0) is True
    assert flag.calls == 1


def test_gives_up_after_the_timeout() -> None:
    t0 = time.monotonic()
    assert LinkReadiness(Flag(), poll_interval=0.01)("blue", "e1", 0.2) is False
    assert 0.2 <= time.monotonic() - t0 < 1.0


def test_notify_wakes_waiters_before_their_next_poll() -> None:
    flag = Flag()
    waiter = LinkReadiness(flag, poll_interval=30.0)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(waiter, "blue", f"e{i}", 10.0) for i in range(4)]
        time.sleep(0.1)
        t0 = time.monotonic()
        flag.ready.update(("blue", f"e{i}") for i in range(4))
        waiter.notify()
        assert all(f.result(timeout=5) for f in futures)
    assert time.monotonic() - t0 < 1.0


def test_a_notify_between_probe_and_wait_is_not_lost() -> None:
    """A pass that ends after the probe looked but before the waiter sleeps must still wake it
    (else Join would sleep a whole poll interval)."""
    state = {"ready": False, "calls": 0}
    waiter: LinkReadiness

    def probe(network: str, endpoint_id: str) -> bool:
        state["calls"] += 1
        was = bool(state["ready"])
        if not was:  # the pass completes right after this look
            state["ready"] = True
            waiter.notify()
        return was

    waiter = LinkReadiness(probe, poll_interval=30.0)
    t0 = time.monotonic()
    assert waiter("blue", "e1", 10.0) is True
    assert time.monotonic() - t0 < 1.0
    assert state["calls"] == 2

"""Join's wait for the agent: is an endpoint's veth pair built, with the peer still here?

``LinkReadiness`` is the ``ReadyWaiter`` the agent gives the NetworkDriver. The endpoint record
is written by CreateEndpoint; the agent's watcher sees it and its reconciler builds the pair
(``veth_host_name`` in the network's bridge and up, ``veth_peer_name`` beside it, both marked
with the owner alias; the ovs backend builds the same pair without a Linux bridge). Join may hand
the peer to Docker only after that, or Docker would move a half-configured link (or none). The
check reads the kernel directly, so it is true exactly when the pair is usable, whichever pass
built it; ``notify()`` (called after every reconcile
pass) only makes the waiter look again at once instead of at its next poll.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from controller.model.naming import OWNER_ALIAS, veth_host_name, veth_peer_name

IFF_UP = 0x1
Probe = Callable[[str, str], bool]


class KernelProbe:
    """Reads the links of ``netns`` (None: this process's namespace, which is the agent's).
    Thread-safe (one netlink socket, locked, opened on first use and after an error)."""

    def __init__(self, netns: str | None = None, require_master: bool = True) -> None:
        self._netns = netns
        self._require_master = require_master
        self._lock = threading.Lock()
        self._ipr: Any = None

    def _link(self, name: str) -> Any:
        if self._ipr is None:
            self._ipr = IPRoute() if self._netns is None else IPRoute(netns=self._netns, flags=0)
        try:
            return self._ipr.link("get", ifname=name)[0]
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            self._reset()
            raise

    def _reset(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __call__(self, network: str, endpoint_id: str) -> bool:
        """True if the pair is built: host side owned and up (and enslaved, with
        ``require_master``); peer owned and still here. Both backends bring the host side up
        last, after marking both ends (and, on the kernel backend, in the same request that
        puts it in the bridge)."""
        with self._lock:
            host = self._link(veth_host_name(network, endpoint_id))
            if host is None or host.get("IFLA_IFALIAS") != OWNER_ALIAS:
                return False
            if not host["flags"] & IFF_UP:
                return False
            if self._require_master and not host.get("IFLA_MASTER"):
                return False
            peer = self._link(veth_peer_name(network, endpoint_id))
            return peer is not None and peer.get("IFLA_IFALIAS") == OWNER_ALIAS

    def close(self) -> None:
        with self._lock:
            self._reset()


class LinkReadiness:
    """A ``ReadyWaiter`` (see ``network_driver``): polls ``probe`` every ``poll_interval``
    seconds, or at once after ``notify()``. Thread-safe; any number of concurrent waiters."""

    def __init__(
        self,
        probe: Probe | None = None,
        poll_interval: float = 0.02,
        require_master: bool = True,
    ) -> None:
        """``probe`` defaults to a ``KernelProbe`` of this process's namespace;
        ``require_master=False`` for the ovs backend (no Linux bridge on the netdev datapath)."""
        self._kernel: KernelProbe | None = None
        if probe is None:
            self._kernel = probe = KernelProbe(require_master=require_master)
        self._probe: Probe = probe
        self._poll = poll_interval
        self._cond = threading.Condition()
        self._generation = 0

    def notify(self) -> None:
        """Something may have changed (a reconcile pass ended): waiters look again now."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def __call__(self, network: str, endpoint_id: str, timeout: float) -> bool:
        """Block until the pair of ``network``/``endpoint_id`` is built; False after ``timeout``."""
        return self.until(lambda: self._probe(network, endpoint_id), timeout)

    def until(self, check: Callable[[], bool], timeout: float) -> bool:
        """Block until ``check()`` is true, asking it every poll and after every ``notify()``;
        False after ``timeout``. (CNI's ADD waits for its interface this way.)"""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._generation
            if check():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._cond:
                if self._generation == seen:
                    self._cond.wait(min(self._poll, left))

    def close(self) -> None:
        if self._kernel is not None:
            self._kernel.close()

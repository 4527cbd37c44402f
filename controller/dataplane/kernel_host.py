"""``HostSockets``: the kernel backend's sockets in one host namespace and in its endpoint
namespaces, and the ifindex cache every writer shares (``controller/dataplane/kernel.py``
composes it with the readers and writers).

Sockets open on first use and are cached: a pass reuses them. ``index`` maps owned device
names to ifindexes, filled by observation and by creates, so 5,000 FDB writes cost no
lookups; a writer drops it on any failure and after every link delete. Lookups refuse what
heddle does not own (``OpFailed``): a link of someone else's is never adopted. Not
thread-safe.
"""

from __future__ import annotations

import errno
import os

from pyroute2 import IPRoute

from controller.dataplane import link_netlink
from controller.dataplane.backend import OpFailed
from controller.dataplane.netns_handles import cached_in
from controller.dataplane.netns_socket import iproute_in
from controller.dataplane.pyroute2_msgs import Msg, get_link, kind, owned
from controller.dataplane.rtnetlink import RawLink, RawRtnl
from controller.model.naming import OWNER_ALIAS


class HostSockets:
    """pyroute2 and raw rtnetlink sockets in host namespace ``netns`` (``None``: the agent's
    own) and in endpoint namespaces, plus ``index`` (see the module docstring)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self.index: dict[str, int] = {}
        self._ipr: IPRoute | None = None
        self._raw: RawRtnl | None = None
        self._ns: dict[str, tuple[int, IPRoute]] = {}
        self._raw_ns: dict[str, tuple[int, RawRtnl]] = {}

    def host(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = iproute_in(self.netns)
        return self._ipr

    def rtnl(self) -> RawRtnl:
        if self._raw is None:
            self._raw = RawRtnl(self.netns)
        return self._raw

    def drop_raw(self) -> None:
        """Close the host's raw socket (it may hold late answers after an error)."""
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def ns_handle(self, name: str) -> IPRoute | None:
        """A cached socket in endpoint netns ``name``; ``None`` if the namespace does not exist
        (or the file is no network namespace: that endpoint fails, not the pass).

        Never creates a namespace (``flags=0``). A cached socket whose name now refers to a
        different namespace (deleted and re-created) is replaced."""
        return cached_in(self._ns, name, iproute_in)  # not IPRoute(netns=...): that forks

    def raw_in(self, name: str) -> RawRtnl | None:
        """A cached raw socket in endpoint netns ``name`` (as ``ns_handle``)."""
        return cached_in(self._raw_ns, name, RawRtnl)

    def endpoint_namespaces(self) -> set[str]:
        """The endpoint namespaces a socket is open in."""
        return {*self._ns, *self._raw_ns}

    def drop_ns(self, name: str) -> None:
        for cache in (self._ns, self._raw_ns):
            if name in cache:
                cache.pop(name)[1].close()

    def close(self) -> None:
        """Close every socket. Idempotent; sockets reopen on next use."""
        for name in self.endpoint_namespaces():
            self.drop_ns(name)
        self.drop_raw()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    # -- owned links ------------------------------------------------------------------------

    def mine(self, name: str, of_kind: str) -> Msg | None:
        """The owned link ``name`` of ``of_kind`` (pyroute2), ``None`` if absent; ``OpFailed``
        if it is someone else's (never adopted) or of another kind."""
        msg = get_link(self.host(), name)
        if msg is None:
            self.index.pop(name, None)
            return None
        if not owned(msg):
            raise OpFailed(f"link {name} exists and is not owned by heddle; refusing to adopt it")
        if kind(msg) != of_kind:
            raise OpFailed(f"link {name} is a {kind(msg) or 'link'}, not a {of_kind}")
        if of_kind == "vxlan":
            self.index[name] = msg["index"]
        return msg

    def raw_mine(self, name: str, of_kind: str) -> RawLink | None:
        """``mine`` over the raw socket."""
        [(code, link)] = self.rtnl().exchange([link_netlink.get_link(name)])
        if code == errno.ENODEV:
            return None
        if link is None:
            raise OpFailed(f"netlink: reading {name}: {os.strerror(code or errno.EIO)}")
        if link.alias != OWNER_ALIAS:
            raise OpFailed(f"link {name} exists and is not owned by heddle; refusing to adopt it")
        if link.kind != of_kind:
            raise OpFailed(f"link {name} is a {link.kind or 'link'}, not a {of_kind}")
        return link

    def bridge_index(self, name: str) -> int:
        msg = self.mine(name, "bridge")
        if msg is None:
            raise OpFailed(f"no bridge {name}")
        return int(msg["index"])

    def vx_index(self, dev: str, missing_ok: bool = False) -> int | None:
        """Ifindex of owned VXLAN device ``dev``: from ``index``, else one ``get``."""
        idx = self.index.get(dev)
        if idx is not None:
            return idx
        msg = self.mine(dev, "vxlan")
        if msg is None:
            if missing_ok:
                return None
            raise OpFailed(f"no vxlan device {dev}")
        return int(msg["index"])

    def port_index(self, port: str, missing_ok: bool) -> int | None:
        """Ifindex of an owned bridge port (veth or VXLAN device), cached as ``vx_index``."""
        idx = self.index.get(port)
        if idx is not None:
            return idx
        msg = get_link(self.host(), port)
        if msg is None or not owned(msg):
            if msg is None and missing_ok:
                return None
            raise OpFailed(f"no bridge port {port} owned by heddle")
        self.index[port] = int(msg["index"])
        return int(msg["index"])

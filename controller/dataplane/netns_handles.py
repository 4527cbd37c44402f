"""Handles on network namespaces by name, for the drivers that work inside endpoint namespaces
(``controller/dataplane/kernel_host.py``, ``controller/dataplane/ovs_host.py``): sockets cached per
namespace and dropped when the name comes to refer to another namespace (deleted and
re-created), a descriptor of a namespace for the requests that put a link there, and whether two
names are one namespace (an endpoint's is never the host's). No state of its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

from controller.dataplane.backend import OpFailed
from controller.dataplane.netns_socket import is_netns
from controller.model.naming import netns_path


def netns_inode(name: str) -> int | None:
    """The inode of namespace ``name``'s file; ``None`` when there is none."""
    try:
        return os.stat(netns_path(name)).st_ino
    except FileNotFoundError:
        return None


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` are one file (two names of one namespace)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


class _Closable(Protocol):
    def close(self) -> None: ...


_Socket = TypeVar("_Socket", bound=_Closable)


def cached_in(
    cache: dict[str, tuple[int, _Socket]], name: str, make: Callable[[str], _Socket]
) -> _Socket | None:
    """``cache[name]``'s socket, made with ``make(name)`` when missing or when the name now
    refers to another namespace (deleted and re-created: the old socket is closed); ``None``
    if there is no such namespace (or the file is none: that endpoint fails, not the pass)."""
    inode = netns_inode(name) if is_netns(name) else None
    cached = cache.get(name)
    if cached is not None and cached[0] != inode:
        cache.pop(name)[1].close()
        cached = None
    if inode is None:
        return None
    if cached is None:
        try:
            sock = make(name)
        except FileNotFoundError:
            return None
        cache[name] = (inode, sock)
        return sock
    return cached[1]


@contextlib.contextmanager
def netns_fd(netns: str) -> Iterator[int]:
    """A descriptor of ``netns``'s file (a name or a path), closed afterwards; what the kernel
    takes to put a link there. Raises ``OpFailed`` if the namespace does not exist."""
    try:
        fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OpFailed(f"network namespace {netns} does not exist") from None
    try:
        yield fd
    finally:
        os.close(fd)


def refuse_host_namespace(netns: str, host: str | None) -> None:
    """Raise ``OpFailed`` if endpoint namespace ``netns`` is ``host`` (the namespace the agent
    manages as the host; ``None``: its own). An endpoint's namespace is a workload's: a record
    naming ``/proc/1/ns/net`` would otherwise put an overlay address on the host."""
    here = "/proc/self/ns/net" if host is None else netns_path(host)
    if same_file(netns_path(netns), here):
        raise OpFailed(f"namespace {netns} is the host's own: no endpoint goes there")

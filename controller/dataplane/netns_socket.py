"""Sockets (and sysctls) inside a network namespace, without a process or a thread of their own.

``setns`` is per thread and a socket keeps the namespace it was created in, so the calling thread
joins the namespace (``flags=0``-like: never creates it), makes the socket, and returns to its own
namespace before the call returns. Two ``setns`` calls cost ~5 us. A short-lived thread
doing the same costs 0.1 ms idle but 0.5-2 ms inside a busy agent, whose other threads (the
kernel-event listener parsing the very notifications a pass causes) hold the GIL meanwhile; and
pyroute2's ``IPRoute(netns=...)`` forks a helper process, 20-30 ms in an agent with gRPC threads.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute

from controller.model.naming import netns_path

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Move this thread into the network namespace open as ``fd``. Only a ctypes call: safe
    between ``fork`` and ``exec`` (``controller/lab/nsutil.py``). Raises ``OSError``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` run on this thread inside ``netns`` (``None``: where it is); the thread is back
    in its own namespace when this returns or raises. Raises ``FileNotFoundError`` if the
    namespace does not exist, ``OSError`` if it cannot be entered (the file is no network
    namespace), else what ``fn`` raises.

    Should the way back ever fail, the process ends at once (exit 70): a thread left in an
    endpoint's namespace would take that namespace for the host's. A supervised agent restarts
    and resumes without touching the data plane."""
    if netns is None:
        return fn()
    try:
        target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"network namespace {netns} does not exist") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target)
            try:
                return fn()
            finally:
                _go_home(home)
        finally:
            os.close(home)
    finally:
        os.close(target)


def _go_home(home: int) -> None:
    try:
        setns(home)
    except OSError as exc:  # cannot happen short of the kernel refusing our own namespace
        os.write(2, f"heddle: cannot return to this thread's network namespace: {exc}\n".encode())
        os._exit(70)


NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type (Linux >= 4.11)
CLONE_NEWNET = 0x40000000


def is_netns(netns: str) -> bool:
    """Whether ``netns`` (a name or a path) is a network namespace: the file exists and the
    kernel says it is one (an endpoint record may name any path; a regular file there must be
    a refused endpoint, not a failed pass)."""
    try:
        fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return bool(fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET)
    except OSError:
        return False
    finally:
        os.close(fd)


def socket_in(netns: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A new socket in ``netns`` (``None``: the caller's; a name under /run/netns or a path,
    ``controller/model/naming.py``). Raises ``FileNotFoundError`` if the namespace does not
    exist, ``OSError`` if the socket cannot be made."""
    return in_netns(netns, lambda: socket.socket(family, kind, proto))


def sysctl(netns: str | None, key: str, value: str | None = None) -> str:
    """Read (and with ``value`` first write) ``/proc/sys/<key>`` of ``netns``: the network
    sysctls are per namespace, and the file answers for the namespace of whoever opens it.
    Raises ``OSError``."""
    path = "/proc/sys/" + key.replace(".", "/")

    def work() -> str:
        if value is not None:
            with open(path, "w") as f:
                f.write(value)
        with open(path) as f:
            return f.read().strip()

    return in_netns(netns, work)


def enable_ipv6(netns: str | None, ifname: str) -> bool:
    """Turn IPv6 on for interface ``ifname`` of ``netns`` (None: this namespace):
    ``disable_ipv6`` 0. Runtimes and hardened hosts often turn it off in a namespace's
    defaults, and then an address or neighbour entry cannot be added; netlink cannot set it
    (docs/platform.md K15). False when there is no such interface yet. Idempotent; raises
    ``OSError`` otherwise."""
    path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"

    def work() -> bool:
        try:
            with open(path, "r+") as f:
                if f.read().strip() != "0":
                    f.seek(0)
                    f.write("0")
        except FileNotFoundError:
            return False
        return True

    return in_netns(netns, work)


def iproute_in(netns: str | None) -> IPRoute:
    """A pyroute2 ``IPRoute`` bound to ``netns`` (``None``: the caller's), without a fork.
    Raises ``FileNotFoundError`` if the namespace does not exist."""
    if netns is None:
        return IPRoute()
    sock = socket_in(netns, socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
    return IPRoute(fileno=sock.detach())

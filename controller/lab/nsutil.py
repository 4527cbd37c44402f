"""Small, dependable primitives for the lab: network-namespace entry, PID-exact process control
and what the lab's child processes run with (environment) and leave (log tails).

Why not ``ip netns exec`` or pyroute2's ``setns`` in a ``preexec_fn``: ``ip netns exec`` also
remounts ``/sys`` and adds a process layer, and running Python code between ``fork`` and ``exec``
of a multi-threaded parent (pyroute2 keeps an asyncio loop thread) is only safe if it takes no
locks. So the namespace file is opened *before* the fork and the child only calls ``setns(2)``.

Processes are identified by ``ProcRef`` = (pid, start time in clock ticks). A PID alone can be
reused after the process dies; the pair cannot, so ``down`` never signals a stranger. Nothing here
ever finds a process by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from controller.dataplane.netns_socket import in_netns, setns
from controller.model.errors import HeddleError

NETNS_DIR = Path("/run/netns")
_REPO_ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


class LabError(HeddleError):
    """The lab could not do what was asked; the message says what and how to recover."""


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def _open_netns(name: str) -> int:
    try:
        return os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"network namespace {name!r} does not exist") from None


def popen_in_netns(
    netns: str | None, argv: Sequence[str], **kwargs: Any
) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside ``netns`` (root netns if None). ``kwargs`` go to ``Popen``.

    The child enters the namespace with one ``setns`` call between fork and exec (no locks).
    """
    if netns is None:
        return subprocess.Popen(list(argv), **kwargs)
    fd = _open_netns(netns)
    try:
        return subprocess.Popen(list(argv), preexec_fn=lambda: setns(fd), **kwargs)
    finally:
        os.close(fd)


def run_in_netns(
    netns: str | None, argv: Sequence[str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``netns`` to completion; capture text output. Never raises on exit code."""
    with popen_in_netns(
        netns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return subprocess.CompletedProcess(
            list(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )


def call_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on this thread inside ``netns`` (``controller/dataplane/netns_socket.py``:
    the thread is back in its own namespace afterwards); return its result or re-raise.

    ``setns`` is per thread, and a socket keeps the namespace it was created in, so this is how
    the lab opens raw sockets in a namespace or writes ``/proc/sys/net`` there without forking.
    ``LabError`` if the namespace does not exist."""
    if not netns_exists(netns):
        raise LabError(f"network namespace {netns!r} does not exist")
    return in_netns(netns, fn)


def write_sysctls(netns: str | None, values: Mapping[str, str | int]) -> None:
    """Write ``/proc/sys/<key>`` = value for each item, in ``netns`` (root if None).

    Keys use slashes (``net/bridge/bridge-nf-call-iptables``). Missing keys raise ``LabError``.
    """

    def apply() -> None:
        for key, value in values.items():
            path = Path("/proc/sys") / key
            try:
                path.write_text(f"{value}\n")
            except FileNotFoundError:
                raise LabError(f"sysctl {key} does not exist in netns {netns or 'root'}") from None

    if netns is None:
        apply()
    else:
        call_in_netns(netns, apply)


def read_sysctl(netns: str | None, key: str) -> str:
    def read() -> str:
        return (Path("/proc/sys") / key).read_text().strip()

    return read() if netns is None else call_in_netns(netns, read)


# -- processes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcRef:
    """A process identity that survives PID reuse: PID plus kernel start time (clock ticks)."""

    pid: int
    starttime: int

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "starttime": self.starttime}

    @staticmethod
    def from_json(obj: object) -> ProcRef | None:
        if not isinstance(obj, dict):
            return None
        pid, start = obj.get("pid"), obj.get("starttime")
        if isinstance(pid, int) and isinstance(start, int):
            return ProcRef(pid, start)
        return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, starttime) of ``pid`` or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rfind(")") + 2 :].split()  # comm may contain spaces and parentheses
    return rest[0], int(rest[19])


def proc_ref(pid: int) -> ProcRef:
    """The ``ProcRef`` of a live process. Raises ``LabError`` if it is gone already."""
    st = _stat(pid)
    if st is None:
        raise LabError(f"process {pid} is not running")
    return ProcRef(pid, st[1])


def child_ref(proc: subprocess.Popen[bytes]) -> ProcRef:
    """The ``ProcRef`` of a child just started; when it has exited already, one that no live
    process can match (a start time of -1), so it is recorded and never signalled."""
    try:
        return proc_ref(proc.pid)
    except LabError:
        return ProcRef(proc.pid, -1)


def is_running(ref: ProcRef) -> bool:
    """True if this exact process exists and is not a zombie."""
    st = _stat(ref.pid)
    return st is not None and st[1] == ref.starttime and st[0] not in ("Z", "X")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def send_signal(ref: ProcRef, sig: int) -> bool:
    """Signal exactly this process; False if it is gone (or the PID now belongs to another)."""
    if not is_running(ref):
        return False
    try:
        os.kill(ref.pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(ref: ProcRef, timeout: float) -> bool:
    """Wait until the process has exited (reaping it if it is our child). True if gone."""
    deadline = time.monotonic() + timeout
    while True:
        _reap(ref.pid)
        if not is_running(ref):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def stop_process(ref: ProcRef | None, timeout: float = 5.0) -> None:
    """SIGTERM (and SIGCONT, in case it is frozen), wait, then SIGKILL. Idempotent; never raises."""
    if ref is None:
        return
    if not is_running(ref):
        _reap(ref.pid)
        return
    send_signal(ref, signal.SIGTERM)
    send_signal(ref, signal.SIGCONT)
    if wait_gone(ref, timeout):
        return
    send_signal(ref, signal.SIGKILL)
    wait_gone(ref, 5.0)


def kill_process(ref: ProcRef | None, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
    """Send ``sig`` (default SIGKILL) and wait for the exit. Idempotent; never raises."""
    if ref is None:
        return
    send_signal(ref, sig)
    if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
        wait_gone(ref, timeout)


def child_env() -> dict[str, str]:
    """Environment for lab children: the checkout first on ``PYTHONPATH``, unbuffered output."""
    env = dict(os.environ)
    paths = [str(_REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of the log at ``path`` (for an error message), or a note."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"

"""What a lab's daemons leave behind, found by what they share rather than by name: the
processes in one mount namespace (a dockerd's holder, ``controller/lab/docker.py``: dockerd,
containerd, shims) or in the cgroups under one parent (a host's containers), and those cgroups.
Processes come back as ``ProcRef`` (PID and start time), so the caller signals exactly them.
Never raises for a process or cgroup that is gone meanwhile.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from controller.lab.nsutil import LabError, ProcRef, is_running, proc_ref

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def procs_in_mount_ns(holder: ProcRef) -> list[ProcRef]:
    """Every process (but the holder) in the holder's mount namespace: dockerd, containerd,
    shims. Identified by the namespace inode, never by name."""
    if not is_running(holder):
        return []
    try:
        ns = os.readlink(f"/proc/{holder.pid}/ns/mnt")
    except OSError:
        return []
    out = []
    for pid in _pids():
        if pid == holder.pid:
            continue
        with contextlib.suppress(OSError, LabError):
            if os.readlink(f"/proc/{pid}/ns/mnt") == ns:
                out.append(proc_ref(pid))
    return out


def _cgroup_dirs(parent: str) -> list[Path]:
    out = []
    with contextlib.suppress(OSError):
        for ctrl in sorted(CGROUP_ROOT.iterdir()):
            d = ctrl / parent
            if d.is_dir():
                out.append(d)
    return out


def procs_in_cgroups(parent: str) -> list[ProcRef]:
    """Every process in a cgroup under ``parent`` (the host's containers), in any hierarchy."""
    pids: set[int] = set()
    for top in _cgroup_dirs(parent):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in procs.read_text().split())
    refs = []
    for pid in sorted(pids):
        with contextlib.suppress(LabError):
            refs.append(proc_ref(pid))
    return refs


def remove_cgroup_tree(top: Path) -> list[str]:
    """Remove the cgroup directory ``top`` and every one below it, deepest first (the kernel
    removes only an empty one); a line when ``top`` stays (processes still in it)."""
    for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    try:
        top.rmdir()
    except OSError as exc:
        return [f"cgroup {top}: {exc}"]
    return []


def remove_cgroups(parent: str) -> list[str]:
    """``remove_cgroup_tree`` for the cgroups under ``parent`` in every hierarchy."""
    return [line for top in _cgroup_dirs(parent) for line in remove_cgroup_tree(top)]

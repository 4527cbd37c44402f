"""A private Podman per lab host (Debian's ``podman`` with the CNI network backend), for the
CNI e2e tests, the benchmark and ``heddle lab up --podman``.

Recipe (docs/platform.md P1-P4), per host ``hK`` with its directory ``D = base/hK``:

* ``D/containers.conf`` and ``D/storage.conf`` (named by ``CONTAINERS_CONF`` and
  ``CONTAINERS_STORAGE_CONF``) keep everything of this Podman under ``D``: storage, run root,
  temporary files, locks (``lock_type = "file"``), events, runc's state (through the wrapper
  ``D/runc-wrap``), and the CNI configuration directory ``D/cni-net.d``. The plugin directories
  are ``base/bin``, which holds ``heddle-cni`` as ``heddle cni plugin`` writes it
  (``controller/cni/install.py``), and Debian's ``/usr/lib/cni``.
* every podman command runs in the host's network namespace (one ``setns`` before exec, as
  ``nsenter --net``; not ``ip netns exec``, which remounts ``/sys`` and hides the cgroups runc
  needs), so the container namespaces Podman makes and the CNI calls it makes belong to that
  host, and ``heddle-cni`` reaches that host's agent (``LabAgents.cni_socket``).
* the image ``IMAGE`` is ``podman import`` of the lab's busybox root filesystem.
* ``sync_networks`` writes a configuration list (``controller/cni/install.py``, as
  ``heddle cni install`` does) for every heddle network, and removes those of networks gone.

Everything lives under ``base`` (default ``/run/hpod-<prefix>``) and ``down()`` -- from any
process -- removes every container (``podman rm -af``), unmounts what is left mounted under
``base``, removes the CNI result cache entries of the lab's configurations, the cgroups Podman
made when empty, and ``base``. Idempotent. Not thread-safe.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from controller.cni.install import install, install_plugin, is_heddles
from controller.desired import DesiredState
from controller.lab.nsutil import LabError, popen_in_netns
from controller.lab.rootfs import build_rootfs_tar
from controller.lab.topology import Lab

IMAGE = "localhost/heddle-busybox"
PODMAN = "podman"
CNI_RESULTS = Path("/var/lib/cni/results")
CGROUP_ROOT = Path("/sys/fs/cgroup")
BLOB_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")

_CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_backend = "cni"
cni_plugin_dirs = [{plugin_dirs}]
network_config_dir = "{d}/cni-net.d"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/tmp/events.log"
tmp_dir = "{d}/tmp"
lock_type = "file"
static_dir = "{d}/storage/libpod"
volume_path = "{d}/storage/volumes"
image_copy_tmp_dir = "{d}/tmp"
runtime = "hostrunc"
runtime_supports_json = ["hostrunc"]

[engine.runtimes]
hostrunc = ["{d}/runc-wrap"]
"""
_STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{d}/storage"
runroot = "{d}/run"
"""


class PodmanLab:
    """One Podman per host of ``lab``; see the module docstring."""

    def __init__(self, lab: Lab, base: Path | None = None) -> None:
        self.lab = lab
        self.base = base if base is not None else Path("/run") / f"hpod-{lab.prefix}"

    def dir(self, host: str) -> Path:
        return self.base / host

    def cni_dir(self, host: str) -> Path:
        """The CNI configuration directory of ``host``'s Podman."""
        return self.dir(host) / "cni-net.d"

    def env(self, host: str) -> dict[str, str]:
        d = self.dir(host)
        return {**os.environ, "CONTAINERS_CONF": str(d / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(d / "storage.conf")}  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Set up every host's Podman and import the image. Raises ``LabError`` (Podman
        missing, or a command failed); on failure call ``down()``."""
        if shutil.which(PODMAN) is None:
            raise LabError(
                "podman is not installed (apt install podman containernetworking-plugins)"
            )
        self.base.mkdir(parents=True, exist_ok=True)
        marker = self.base / "blob-cache-was-there"
        if BLOB_CACHE.exists() and not marker.exists():
            marker.write_text("")
        rootfs = build_rootfs_tar(self.base / "rootfs.tar")
        install_plugin(self.base / "bin")
        for h in self.lab.hosts:
            self._configure(h.name)
            self.podman(h.name, ["import", "--change", 'CMD ["/bin/sh"]', str(rootfs), IMAGE])
            self.sync_networks(h.name)

    def _configure(self, host: str) -> None:
        d = self.dir(host)
        for sub in ("tmp", "storage", "run", "runc", "cni-net.d"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        plugin_dirs = ", ".join(f'"{p}"' for p in (self.base / "bin", "/usr/lib/cni"))
        (d / "containers.conf").write_text(_CONTAINERS_CONF.format(d=d, plugin_dirs=plugin_dirs))
        (d / "storage.conf").write_text(_STORAGE_CONF.format(d=d))
        wrap = d / "runc-wrap"
        wrap.write_text(f'#!/bin/sh\nexec /usr/sbin/runc --root {d}/runc "$@"\n')
        wrap.chmod(0o755)

    def podman(
        self, host: str, args: Sequence[str], check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``podman ARGS`` as ``host``'s Podman (in its network namespace). Raises
        ``LabError`` when ``check`` and it fails."""
        proc = popen_in_netns(
            self.lab.host(host).netns, [PODMAN, *args], env=self.env(host),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        done = subprocess.CompletedProcess(
            [PODMAN, *args], proc.returncode, out.decode(errors="replace"),
            err.decode(errors="replace"),
        )  # fmt: skip
        if check and done.returncode != 0:
            raise LabError(f"{host}: podman {' '.join(args)}: {done.stderr.strip()[-400:]}")
        return done

    def sync_networks(self, host: str) -> list[Path]:
        """A configuration list for every heddle network in ``host``'s Podman; the lists of
        networks that are gone removed. Returns the lists written."""
        kv = self.lab.kv()
        try:
            names = [n.name for n in DesiredState(kv).networks()]
        finally:
            kv.close()
        socket = str(self.lab.agents.cni_socket(host))
        written = [install(self.cni_dir(host), n, host, socket)[0] for n in names]
        for old in self.cni_dir(host).glob("*.conflist"):
            if old not in written and is_heddles(old):
                old.unlink()
        return written

    def down(self) -> None:
        """Remove every trace (see the module docstring). Idempotent; never raises."""
        if not self.base.exists():
            return
        for d in sorted(p for p in self.base.iterdir() if (p / "containers.conf").exists()):
            if d.name in {h.name for h in self.lab.hosts}:
                with contextlib.suppress(LabError, OSError):
                    self.podman(d.name, ["rm", "-a", "-f", "-t", "0"], check=False, timeout=60)
        _unmount_under(self.base)
        self._forget_cni_results()
        for ctl in CGROUP_ROOT.glob("*/libpod_parent"):
            for sub in (ctl / "conmon", ctl):
                with contextlib.suppress(OSError):
                    sub.rmdir()
        if not (self.base / "blob-cache-was-there").exists():
            with contextlib.suppress(OSError):
                BLOB_CACHE.unlink()
        shutil.rmtree(self.base, ignore_errors=True)

    def _forget_cni_results(self) -> None:
        """libcni's cache of results the lab's configurations produced (a DEL that failed
        leaves one behind); recognised by the lab's sockets in the cached configuration."""
        mine = str(self.lab.workdir)
        for entry in CNI_RESULTS.glob("*") if CNI_RESULTS.is_dir() else ():
            with contextlib.suppress(OSError, ValueError, TypeError):
                cached = json.loads(entry.read_text())
                config = base64.b64decode(cached.get("config", "")).decode(errors="replace")
                if mine in config:
                    entry.unlink()


def _unmount_under(base: Path) -> None:
    """Lazily unmount every mount point under ``base``, deepest first."""
    prefix = str(base).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)

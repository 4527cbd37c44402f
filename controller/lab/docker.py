"""A real dockerd per lab host (Debian's ``docker.io``), for the Docker e2e tests and benchmarks.

Recipe (docs/platform.md D1-D3 for what dockerd does), per host ``hK``:

* a long-lived **holder** process: entered into the host's netns, then ``unshare --mount --uts
  --propagation private``; it remounts sysfs (so ``/sys/class/net`` is the host's) with the
  cgroup hierarchies re-bound under it (runc needs them), binds per-host directories over
  ``/etc/docker``, ``/run/docker``, ``/run/containerd`` and ``/var/lib/docker`` (dockerd writes
  there whatever its flags say), writes a ready file and sleeps. Its mount namespace is where
  dockerd runs and where its container netns bind mounts live, so a restarted dockerd sees its
  predecessor's.
* **dockerd** of the lab's engine (``controller/lab/docker_engine.py``: Debian's 20.10 or
  trixie's 26.1, recorded so every later start uses the same one):
  ``nsenter -t <holder> -m -u -n -- dockerd --iptables=false --ip6tables=false
  --bridge=none --ip-forward=false --ip-masq=false`` (and ``--live-restore`` on request) with
  private ``--data-root``, ``--exec-root``, ``--pidfile``, ``-H unix://...`` and
  ``--cgroup-parent /<prefix>-<host>`` (so teardown finds every container process by cgroup).
  nsenter execs dockerd: the PID is dockerd's.
* the host's ``/run/docker/plugins`` is ``plugin_dir(host)`` on the real filesystem, so the
  agent (root mount namespace, host netns) serves ``plugin_socket(host)`` and only that host's
  dockerd sees it as ``/run/docker/plugins/heddle.sock``.
* the image ``IMAGE`` is ``docker import`` of a rootfs made from ``/bin/busybox`` (static):
  no registry is needed.

Everything lives under ``base`` (default ``/run/hdock-<prefix>``: short, because unix socket
paths are limited to 107 bytes) and is recorded in ``base/docker.json`` before it is created,
so ``down()`` from any process stops exactly the recorded processes (by ``ProcRef``, never by
name), then anything left in a holder's mount namespace or in a host's cgroups (by PID), removes
the cgroups, the directories and the mount targets it created. Idempotent. Not thread-safe.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from controller.lab.docker_engine import DEFAULT_ENGINE, Engine, engine
from controller.lab.nsutil import (
    LabError,
    ProcRef,
    child_ref,
    is_running,
    kill_process,
    log_tail,
    popen_in_netns,
    stop_process,
)
from controller.lab.rootfs import build_rootfs_tar
from controller.lab.sweep import procs_in_cgroups, procs_in_mount_ns, remove_cgroups
from controller.lab.topology import Lab

DOCKER = "/usr/bin/docker"  # Debian's client (a newer /usr/local/bin/docker may come first)
IMAGE = "heddle/busybox:latest"
PLUGIN = "heddle"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0  # dockerd stops containers (10 s grace each, in parallel) before exiting
#: Mount targets the holder binds over; created (and removed again at ``down``) if missing.
TARGETS = {
    "etc": "/etc/docker",
    "run": "/run/docker",
    "containerd": "/run/containerd",
    "varlib": "/var/lib/docker",
}
RECORD = "docker.json"

_HOLDER_SCRIPT = r"""
set -eu
base=$1; hostname "$2"
mkdir -p "$base/cg"
mount --rbind /sys/fs/cgroup "$base/cg"
mount -t sysfs sysfs /sys
mount --rbind "$base/cg" /sys/fs/cgroup
umount -l "$base/cg"
mount --bind "$base/etc" /etc/docker
mount --bind "$base/run" /run/docker
mount --bind "$base/containerd" /run/containerd
mount --bind "$base/varlib" /var/lib/docker
touch "$base/holder.ready"
exec sleep infinity
"""


@dataclass(frozen=True, slots=True)
class DockerHostRecord:
    name: str
    netns: str
    base: str
    holder: ProcRef | None = None
    dockerd: ProcRef | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "netns": self.netns,
            "base": self.base,
            "holder": self.holder.to_json() if self.holder else None,
            "dockerd": self.dockerd.to_json() if self.dockerd else None,
        }

    @staticmethod
    def from_json(o: dict[str, Any]) -> DockerHostRecord:
        return DockerHostRecord(
            str(o["name"]),
            str(o["netns"]),
            str(o["base"]),
            ProcRef.from_json(o.get("holder")),
            ProcRef.from_json(o.get("dockerd")),
        )


@dataclass(frozen=True, slots=True)
class DockerRecord:
    prefix: str
    engine: str = DEFAULT_ENGINE
    hosts: tuple[DockerHostRecord, ...] = ()
    created_targets: tuple[str, ...] = ()
    cgroup_parents: tuple[str, ...] = field(default=())


def default_base(prefix: str) -> Path:
    return Path("/run") / f"hdock-{prefix}"


def unix_http(path: str, method: str, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP request on the unix socket ``path`` (dockerd's API); raises ``OSError``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(
            f"{method} {url} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode()
        )
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, resp.read()
    finally:
        sock.close()


class DockerLab:
    """One dockerd per host of ``lab``; see the module docstring."""

    def __init__(
        self,
        lab: Lab,
        base: Path | None = None,
        live_restore: bool = False,
        engine: str | None = None,
    ) -> None:
        """``engine``: one of ``docker_engine.ENGINES``; None means the one this lab's record
        names (a lab started earlier), else ``DEFAULT_ENGINE``."""
        self.lab = lab
        self.base = Path(base) if base is not None else default_base(lab.prefix)
        self.live_restore = live_restore
        self._engine_name = engine
        self._engine: Engine | None = None

    @property
    def engine_name(self) -> str:
        return self._engine_name or self._load().engine

    def _the_engine(self) -> Engine:
        if self._engine is None:
            self._engine = engine(self.engine_name)
        return self._engine

    # -- record -------------------------------------------------------------------------------
    def _load(self) -> DockerRecord:
        try:
            o = json.loads((self.base / RECORD).read_text())
        except FileNotFoundError:
            return DockerRecord(self.lab.prefix, self._engine_name or DEFAULT_ENGINE)
        return DockerRecord(
            str(o["prefix"]),
            str(o.get("engine", DEFAULT_ENGINE)),
            tuple(DockerHostRecord.from_json(h) for h in o.get("hosts", ())),
            tuple(o.get("created_targets", ())),
            tuple(o.get("cgroup_parents", ())),
        )

    def _save(self, rec: DockerRecord) -> DockerRecord:
        self.base.mkdir(parents=True, exist_ok=True)
        tmp = self.base / f"{RECORD}.tmp"
        tmp.write_text(
            json.dumps(
                {
                    "prefix": rec.prefix,
                    "engine": rec.engine,
                    "hosts": [h.to_json() for h in rec.hosts],
                    "created_targets": list(rec.created_targets),
                    "cgroup_parents": list(rec.cgroup_parents),
                },
                indent=2,
            )
        )
        os.replace(tmp, self.base / RECORD)
        return rec

    def _host(self, name: str) -> DockerHostRecord | None:
        return next((h for h in self._load().hosts if h.name == name), None)

    def _put_host(self, host: DockerHostRecord) -> None:
        rec = self._load()
        others = tuple(h for h in rec.hosts if h.name != host.name)
        self._save(replace(rec, hosts=(*others, host)))

    # -- paths --------------------------------------------------------------------------------
    def host_dir(self, host: str) -> Path:
        return self.base / host

    def plugin_dir(self, host: str) -> Path:
        """This host's ``/run/docker/plugins`` as seen from the root mount namespace."""
        return self.host_dir(host) / "run" / "plugins"

    def plugin_socket(self, host: str) -> Path:
        """Where ``host``'s agent must serve the plugin (``--plugin-socket``)."""
        return self.plugin_dir(host) / f"{PLUGIN}.sock"

    def docker_socket(self, host: str) -> Path:
        return self.host_dir(host) / "docker.sock"

    def wait_plugins(self, timeout: float = 15.0, hosts: Sequence[str] | None = None) -> bool:
        """Wait until every host's agent serves the plugin socket; False after ``timeout``."""
        names = list(hosts) if hosts is not None else [h.name for h in self.lab.hosts]
        deadline = time.monotonic() + timeout
        while not all(self.plugin_socket(n).exists() for n in names):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def cgroup_parent(self, host: str) -> str:
        return f"{self.lab.prefix}-{host}"

    def log_path(self, host: str) -> Path:
        return self.host_dir(host) / "dockerd.log"

    # -- start / stop -------------------------------------------------------------------------
    def start(self, hosts: Sequence[str] | None = None, image: bool = True) -> None:
        """Start holder + dockerd on each host (default: all lab hosts), wait until each
        answers, import the busybox image. On failure everything is torn down and re-raised."""
        for cmd in (DOCKER, "/usr/bin/unshare", "/usr/bin/nsenter"):
            if not Path(cmd).exists():
                raise LabError(f"{cmd} missing (apt install docker.io util-linux)")
        eng = self._the_engine()
        names = list(hosts) if hosts is not None else [h.name for h in self.lab.hosts]
        try:
            self._save(replace(self._load(), engine=eng.name))
            for name in names:
                self.start_dockerd(name)
            if image:
                tar = build_rootfs_tar(self.base / "rootfs.tar")
                for name in names:
                    self.import_image(name, tar)
        except BaseException:
            self.down()
            raise

    def _ensure_targets(self) -> None:
        rec = self._load()
        created = list(rec.created_targets)
        for target in TARGETS.values():
            if not Path(target).exists():
                created.append(target)
                self._save(replace(rec, created_targets=tuple(created)))
                Path(target).mkdir(parents=True)

    def _start_holder(self, name: str) -> DockerHostRecord:
        h = self.lab.host(name)
        base = self.host_dir(name)
        for sub in ("etc", "run/plugins", "containerd", "varlib", "data", "exec"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        ready = base / "holder.ready"
        ready.unlink(missing_ok=True)
        rec = DockerHostRecord(name, h.netns, str(base))
        self._put_host(rec)
        cgp = self.cgroup_parent(name)
        dr = self._load()
        if cgp not in dr.cgroup_parents:
            self._save(replace(dr, cgroup_parents=(*dr.cgroup_parents, cgp)))
        argv = [
            "/usr/bin/unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            _HOLDER_SCRIPT,
            "holder",
            str(base),
            cgp,
        ]
        with open(base / "holder.log", "ab") as log:
            proc = popen_in_netns(
                h.netns,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        rec = replace(rec, holder=child_ref(proc))
        self._put_host(rec)
        deadline = time.monotonic() + 10.0
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(
                    f"docker holder of {name} failed:\n{log_tail(base / 'holder.log', 30)}"
                )
            time.sleep(0.02)
        return rec

    def start_dockerd(self, name: str) -> int:
        """Start ``name``'s dockerd (and its holder if needed); wait until it answers. Returns
        the dockerd PID. No-op if it runs."""
        self._ensure_targets()
        rec = self._host(name)
        if rec is None or rec.holder is None or not is_running(rec.holder):
            rec = self._start_holder(name)
        if rec.dockerd is not None and is_running(rec.dockerd):
            return rec.dockerd.pid
        assert rec.holder is not None
        base = self.host_dir(name)
        argv = [
            "/usr/bin/nsenter",
            "-t",
            str(rec.holder.pid),
            "-m",
            "-u",
            "-n",
            "--",
            self._the_engine().dockerd,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--ip-forward=false",
            "--ip-masq=false",
            "--data-root",
            str(base / "data"),
            "--exec-root",
            str(base / "exec"),
            "--pidfile",
            str(base / "docker.pid"),
            "-H",
            f"unix://{self.docker_socket(name)}",
            "--cgroup-parent",
            f"/{self.cgroup_parent(name)}",
            "--debug",
            *(["--live-restore"] if self.live_restore else []),
        ]
        with open(self.log_path(name), "ab") as log:
            log.write(f"--- lab: starting dockerd at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._the_engine().env(),
            )
        rec = replace(rec, dockerd=child_ref(proc))
        self._put_host(rec)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if unix_http(str(self.docker_socket(name)), "GET", "/_ping")[0] == 200:
                    return proc.pid
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(
                    f"dockerd on {name} did not start:\n{log_tail(self.log_path(name), 30)}"
                )
            time.sleep(0.05)

    def stop_dockerd(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM dockerd, SIGKILL after ``timeout``. Without live restore dockerd stops its
        containers and containerd, and whatever is left in the holder's mount namespace is
        ended; with it, the containers (and their shims) keep running. Idempotent."""
        rec = self._host(name)
        if rec is None:
            return
        stop_process(rec.dockerd, timeout=timeout)
        if rec.holder is not None and not self.live_restore:
            for ref in procs_in_mount_ns(rec.holder):
                kill_process(ref, signal.SIGKILL)
        self._put_host(replace(rec, dockerd=None))

    def restart_dockerd(self, name: str) -> int:
        self.stop_dockerd(name)
        return self.start_dockerd(name)

    def dockerd_running(self, name: str) -> bool:
        rec = self._host(name)
        return rec is not None and rec.dockerd is not None and is_running(rec.dockerd)

    # -- using it -----------------------------------------------------------------------------
    def docker_argv(self, name: str, *args: str) -> list[str]:
        return [DOCKER, "-H", f"unix://{self.docker_socket(name)}", *args]

    def docker(
        self, name: str, *args: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against ``name``'s dockerd (from the root namespace: the socket
        is a file). Raises ``LabError`` with the output when ``check`` and it fails."""
        proc = subprocess.run(
            self.docker_argv(name, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"docker {' '.join(args)} on {name} failed ({proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def import_image(self, name: str, tar: Path) -> None:
        self.docker(
            name,
            "import",
            "--change",
            'CMD ["/bin/sh"]',
            "--change",
            "ENV PATH=/bin",
            str(tar),
            IMAGE,
        )

    # -- down ---------------------------------------------------------------------------------
    def down(self) -> None:
        """Remove every trace (see the module docstring). Idempotent; best effort per object;
        raises ``LabError`` listing what could not be removed."""
        rec = self._load()
        problems: list[str] = []
        for h in rec.hosts:
            stop_process(h.dockerd, timeout=STOP_TIMEOUT)
            if h.holder is not None and is_running(h.holder):
                for ref in procs_in_mount_ns(h.holder):
                    kill_process(ref, signal.SIGKILL)
        for cgp in rec.cgroup_parents:
            for ref in procs_in_cgroups(cgp):
                kill_process(ref, signal.SIGKILL)
        for h in rec.hosts:
            stop_process(h.holder)
        for cgp in rec.cgroup_parents:
            problems += remove_cgroups(cgp)
        if self.base.exists():
            try:
                shutil.rmtree(self.base)
            except OSError as exc:
                problems.append(f"{self.base}: {exc}")
        for target in reversed(rec.created_targets):
            with contextlib.suppress(OSError):
                Path(target).rmdir()  # only if empty: someone else may use it now
        if problems:
            raise LabError("docker lab down incomplete: " + "; ".join(problems))

"""Three Debian hosts booted with systemd as PID 1 in ``systemd-nspawn`` containers: the
stand-in for the Vagrant VMs on machines that cannot boot VMs.

Each container boots the cached rootfs (``infra_rootfs.py``) through an overlayfs of its own
(the cache stays pristine and booting costs no copy), in its own network namespace with one
veth on the lab bridge ``hin-br`` (172.31.226.0/24; the host side is .1, containers .11, .12,
...). There is no default route and the host forwards nothing: the containers reach the lab
and nothing else, so whatever the roles install must already be in the image.

nspawn runs with ``--register=no --keep-unit`` (there is no systemd on the host to register
with), so it uses the cgroup it is started in as the container's: every container gets a cgroup
of its own in the hierarchies systemd uses, created here and entered before exec.
``CAP_NET_ADMIN`` and a writable ``/proc/sys/net`` (``SYSTEMD_NSPAWN_API_VFS_WRITABLE=network``)
let the agent build bridges, VXLAN devices and veths inside.

Everything this module creates is recorded as it is created, and ``down()`` undoes exactly
that (processes by PID, the bridge, mounts, cgroups, the work directory), also after a partial
``up()``. The rootfs cache is kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.dataplane.ovs_host import set_tx_checksum
from controller.lab.sweep import remove_cgroup_tree

PREFIX = "hin"
BRIDGE = f"{PREFIX}-br"
UNDERLAY = "172.31.226"  # .0/24: the lab's underlay; the overlay network uses 172.31.227.0/24
CGROUP_ROOT = Path("/sys/fs/cgroup")

_NET_UNIT = """\
[Unit]
Description=lab underlay address (what a VM's network configuration would do)
DefaultDependencies=no
Before=network.target network-online.target ssh.service
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip link set lo up
ExecStart=/sbin/ip link set host0 up
ExecStart=/sbin/ip address add {address}/24 dev host0

[Install]
WantedBy=network-online.target multi-user.target
"""


class LabError(RuntimeError):
    pass


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60) -> str:
    """Run a command, return stdout; failures raise with stderr in the message."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Container:
    name: str
    address: str
    dir: Path
    process: subprocess.Popen[bytes] | None = None
    cgroups: list[Path] = field(default_factory=list)
    mounted: bool = False

    @property
    def root(self) -> Path:
        return self.dir / "root"


@dataclass
class Lab:
    """The lab's hosts; ``up()`` boots them and waits for sshd, ``down()`` removes all."""

    rootfs: Path
    workdir: Path
    count: int = 3
    containers: list[Container] = field(default_factory=list)
    bridge_created: bool = False
    key: Path = field(init=False)
    ssh_config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.key = self.workdir / "id_ed25519"
        self.ssh_config = self.workdir / "ssh_config"

    # -- up -------------------------------------------------------------------------------

    def up(self, timeout: float = 60) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hin-lab", "-f", str(self.key)])
        self._bridge()
        for i in range(1, self.count + 1):
            c = Container(f"{PREFIX}-c{i}", f"{UNDERLAY}.{10 + i}", self.workdir / f"c{i}")
            self.containers.append(c)
            self._prepare(c)
        for c in self.containers:
            self._boot(c)
        self._write_ssh_config()
        deadline = time.monotonic() + timeout
        for c in self.containers:
            self._wait_ssh(c, deadline)

    def _bridge(self) -> None:
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            raise LabError(f"{BRIDGE} exists: another infra lab is running (or leaked)")
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        self.bridge_created = True
        run(["ip", "address", "add", f"{UNDERLAY}.1/24", "dev", BRIDGE])
        # Packets the test machine sends into the lab leave with full checksums, as from a real
        # NIC: with TX checksum offload on, veths hand them over unchecksummed, and the ovs
        # backend's userspace datapath (AF_PACKET on the container's underlay interface) passes
        # them on as they are, so the container's own stack drops every TCP segment.
        set_tx_checksum(None, BRIDGE, on=False)
        run(["ip", "link", "set", BRIDGE, "up"])

    def _prepare(self, c: Container) -> None:
        """Overlay mount plus the per-host files a VM image's first boot would produce."""
        for d in ("upper", "work", "root"):
            (c.dir / d).mkdir(parents=True)
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.rootfs},upperdir={c.dir / 'upper'},workdir={c.dir / 'work'}",
                str(c.root),
            ]
        )
        c.mounted = True
        (c.root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        (c.root / "etc/hostname").write_text(c.name + "\n")
        (c.root / "etc/hosts").write_text(
            "127.0.0.1 localhost\n"
            + "".join(f"{UNDERLAY}.{10 + i} {PREFIX}-c{i}\n" for i in range(1, self.count + 1))
        )
        ssh = c.root / "root/.ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        os.chmod(ssh / "authorized_keys", 0o600)
        units = c.root / "etc/systemd/system"
        (units / "hin-net.service").write_text(_NET_UNIT.format(address=c.address))
        for target in ("network-online.target", "multi-user.target"):
            wants = units / f"{target}.wants"
            wants.mkdir(exist_ok=True)
            (wants / "hin-net.service").symlink_to("/etc/systemd/system/hin-net.service")

    def _cgroup_dirs(self, c: Container) -> list[Path]:
        """The container's own cgroups: in the hierarchies systemd uses (the named ``systemd``
        v1 hierarchy and the unified one on a hybrid host; the root on a pure v2 host), under
        our own cgroup, so nspawn and the container's systemd own a subtree and never touch
        the cgroup of whoever started the test. Resource controllers stay as they are."""
        if (CGROUP_ROOT / "cgroup.procs").exists():  # pure cgroup v2
            return [CGROUP_ROOT / _own_cgroup("").lstrip("/") / f"{PREFIX}-lab-{c.name}"]
        dirs = []
        for hierarchy, key in (("systemd", "name=systemd"), ("unified", "")):
            if (CGROUP_ROOT / hierarchy / "cgroup.procs").exists():
                base = CGROUP_ROOT / hierarchy / _own_cgroup(key).lstrip("/")
                dirs.append(base / f"{PREFIX}-lab-{c.name}")
        return dirs

    def _boot(self, c: Container) -> None:
        for d in self._cgroup_dirs(c):
            d.mkdir(exist_ok=True)
            c.cgroups.append(d)
        procs = [str(d / "cgroup.procs") for d in c.cgroups]

        def enter_cgroups() -> None:
            for p in procs:
                with open(p, "w") as f:
                    f.write("0")

        log = open(c.dir / "console.log", "wb")  # noqa: SIM115 - handed to the child
        c.process = subprocess.Popen(
            [
                "systemd-nspawn",
                "--boot",
                "--quiet",
                "--register=no",
                "--keep-unit",
                f"--machine={c.name}",
                f"--directory={c.root}",
                f"--network-bridge={BRIDGE}",
                "--capability=CAP_NET_ADMIN",
                "--console=read-only",
                "--resolv-conf=off",
                "--timezone=off",
                "--link-journal=no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"},
            preexec_fn=enter_cgroups,
            start_new_session=True,
        )
        log.close()

    def _write_ssh_config(self) -> None:
        hosts = "".join(f"Host {c.name}\n  HostName {c.address}\n" for c in self.containers)
        self.ssh_config.write_text(
            hosts
            + "Host *\n  User root\n"
            + f"  IdentityFile {self.key}\n  IdentitiesOnly yes\n"
            + "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
            + "  ConnectTimeout 5\n  ServerAliveInterval 5\n  ServerAliveCountMax 3\n"
            # One connection per host shared by ssh, Ansible and testinfra; closed in down().
            + f"  ControlMaster auto\n  ControlPath {self.workdir}/cm-%n\n  ControlPersist 120s\n"
        )

    def _wait_ssh(self, c: Container, deadline: float) -> None:
        while True:
            if c.process is not None and c.process.poll() is not None:
                raise LabError(f"{c.name} exited ({c.process.returncode}): {self.console(c)}")
            with contextlib.suppress(OSError), socket.create_connection((c.address, 22), 1):
                if self.ssh(c.name, "true", check=False, timeout=10).returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise LabError(f"{c.name}: no sshd within the timeout: {self.console(c)}")
            time.sleep(0.3)

    # -- use ------------------------------------------------------------------------------

    def ssh(
        self, host: str, command: str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ssh", "-F", str(self.ssh_config), host, command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise LabError(f"ssh {host} {command!r}: exit {proc.returncode}: {proc.stderr}")
        return proc

    def console(self, c: Container) -> str:
        with contextlib.suppress(OSError):
            return (c.dir / "console.log").read_text(errors="replace")[-3000:]
        return ""

    def _close_master(self, host: str) -> None:
        """End the shared SSH connection to ``host``: ``ssh -O exit``, then by its PID if it
        is wedged (a connection whose TCP path broke under it)."""
        base = ["ssh", "-F", str(self.ssh_config)]
        pid = None
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            check = subprocess.run(
                [*base, "-O", "check", host], capture_output=True, text=True, timeout=5
            )
            m = re.search(r"pid=(\d+)", check.stderr)
            pid = int(m[1]) if m else None
        if pid is None:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run([*base, "-O", "exit", host], capture_output=True, timeout=5)
        with contextlib.suppress(OSError):  # still our master (not a reused PID): kill it
            if Path(f"/proc/{pid}/comm").read_text().strip() == "ssh":
                os.kill(pid, signal.SIGKILL)

    # -- down -----------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Undo everything recorded; return the problems met (it never stops half way)."""
        problems: list[str] = []
        for c in self.containers:
            if self.ssh_config.exists():
                self._close_master(c.name)
            if c.process is not None and c.process.poll() is None:
                # SIGTERM: nspawn asks the container's systemd to power off cleanly.
                c.process.send_signal(signal.SIGTERM)
        for c in self.containers:
            if c.process is None:
                continue
            try:
                c.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # Slow, not leaked: a loaded machine can take this long to stop every unit.
                warnings.warn(f"{c.name}: no clean poweroff in 30 s, killed", stacklevel=1)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.process.pid, signal.SIGKILL)
                c.process.wait(timeout=10)
        for c in self.containers:
            for d in reversed(c.cgroups):
                problems += _remove_cgroup(d)
            if c.mounted:
                try:
                    run(["umount", str(c.root)])
                    c.mounted = False
                except LabError as exc:
                    with contextlib.suppress(LabError):
                        run(["umount", "--lazy", str(c.root)])
                    problems.append(str(exc))
        if self.bridge_created:
            try:
                run(["ip", "link", "delete", BRIDGE])
                self.bridge_created = False
            except LabError as exc:
                problems.append(str(exc))
        if not any(c.mounted for c in self.containers):
            shutil.rmtree(self.workdir, ignore_errors=True)
        return problems


def _own_cgroup(key: str) -> str:
    """Our cgroup path in the hierarchy named by ``key`` in /proc/self/cgroup (``name=systemd``;
    "" for the unified hierarchy)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == key:
            return path
    return "/"


def _remove_cgroup(d: Path) -> list[str]:
    """Remove a container's cgroup subtree, deepest first (systemd in the container made some).
    Processes left in it (there should be none after nspawn exited) are killed by PID."""
    if not d.exists():
        return []
    for _ in range(50):
        leftovers = [
            int(p) for f in d.rglob("cgroup.procs") for p in f.read_text().split() if p.strip()
        ]
        if not leftovers:
            break
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    return remove_cgroup_tree(d)

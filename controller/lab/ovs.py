"""A private Open vSwitch instance (``ovsdb-server`` + ``ovs-vswitchd``) per lab host.

Facts this relies on (docs/platform.md O1, O2): ``ovs-vswitchd`` must run *inside* the host's
network namespace (its route cache, its tap devices and its AF_PACKET ports belong to the
namespace it runs in); every OVS tool must be pointed at one instance explicitly, because the
machine may run others (``--db=unix:...``, ``-t <ctl>``, ``OVS_RUNDIR`` for the ``<bridge>.mgmt``
sockets ``ovs-ofctl`` connects to, which ``ovs-vswitchd`` also creates under ``OVS_RUNDIR``).

Layout of one instance, all under ``workdir`` (keep it short: unix socket paths are limited to
107 bytes)::

  conf.db  db.sock  ovsdb-server.{pid,ctl,log}  ovs-vswitchd.{pid,ctl,log}  <bridge>.mgmt

Contract:

* ``start(netns, workdir)`` creates the database, starts both daemons (``--detach``: each returns
  only once it is serving) and returns an ``OvsInstance``. On any failure it stops what it
  started and raises ``LabError`` with the daemon's log tail.
* Processes are identified by ``ProcRef`` (PID + start time) read from *our* pidfiles, and are
  only signalled when their command line names ``workdir``: a stale pidfile never makes us signal
  a stranger. Nothing is ever found by process name, and the system instance
  (``/var/run/openvswitch``) is never used.
* ``stop()`` (idempotent, never raises) deletes the bridges of this instance (so the userspace
  datapath's tap devices go too), then stops both daemons. ``stop_workdir(workdir)`` does the same
  from another process, from the pidfiles alone (for ``lab down``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.lab.nsutil import (
    LabError,
    ProcRef,
    is_running,
    kill_process,
    popen_in_netns,
    proc_ref,
    stop_process,
)

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
START_TIMEOUT = 30.0
TOOL_TIMEOUT = 10
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "<bridge>.mgmt"

__all__ = ["OvsInstance", "start", "stop_workdir"]


_SYSTEM_DIRS = frozenset({Path("/var/run/openvswitch"), Path("/run/openvswitch")})


def _private(workdir: Path) -> Path:
    """``workdir`` made absolute; ``LabError`` if it is the system instance's directory."""
    absolute = Path(workdir).absolute()
    if absolute in _SYSTEM_DIRS or absolute.resolve() in _SYSTEM_DIRS:
        raise LabError(f"{absolute} belongs to the system Open vSwitch; use a private directory")
    return absolute


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OVS_RUNDIR=str(workdir), OVS_DBDIR=str(workdir), OVS_LOGDIR=str(workdir))
    return env


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _ref_from_pidfile(pidfile: Path, workdir: Path) -> ProcRef | None:
    """The live process named by ``pidfile`` if its command line mentions ``workdir``."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if str(workdir) not in _cmdline(pid):
        return None
    try:
        return proc_ref(pid)
    except LabError:
        return None


def _run(argv: Sequence[str], env: Mapping[str, str], timeout: float = TOOL_TIMEOUT) -> str:
    """Run an OVS tool in the current namespace; return stdout; ``LabError`` on failure."""
    try:
        done = subprocess.run(
            list(argv),
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class OvsInstance:
    """Handle on one private OVS instance; see the module docstring. Frozen: daemons are
    re-read from their pidfiles whenever needed, so any process may hold a handle."""

    netns: str | None
    workdir: Path

    # -- addresses ------------------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        """The OVSDB remote for ``--ovsdb`` (``unix:<workdir>/db.sock``)."""
        return f"unix:{self.workdir / 'db.sock'}"

    @property
    def rundir(self) -> Path:
        """Where ``<bridge>.mgmt`` sockets live (what ``ovs-ofctl`` needs as ``OVS_RUNDIR``)."""
        return self.workdir

    @property
    def vswitchd_ctl(self) -> Path:
        return self.workdir / "ovs-vswitchd.ctl"

    @property
    def vswitchd_log(self) -> Path:
        return self.workdir / "ovs-vswitchd.log"

    @property
    def env(self) -> dict[str, str]:
        return _env(self.workdir)

    # -- processes ------------------------------------------------------------------------------
    @property
    def ovsdb_ref(self) -> ProcRef | None:
        return _ref_from_pidfile(self.workdir / "ovsdb-server.pid", self.workdir)

    @property
    def vswitchd_ref(self) -> ProcRef | None:
        return _ref_from_pidfile(self.workdir / "ovs-vswitchd.pid", self.workdir)

    def vswitchd_running(self) -> bool:
        ref = self.vswitchd_ref
        return ref is not None and is_running(ref)

    def start_vswitchd(self) -> ProcRef:
        """Start ``ovs-vswitchd`` in the host namespace (no-op if running); returns once it
        has detached, i.e. has read its configuration. Raises ``LabError``."""
        ref = self.vswitchd_ref
        if ref is not None and is_running(ref):
            return ref
        w = self.workdir
        argv = [
            "ovs-vswitchd", self.db_url, f"--pidfile={w / 'ovs-vswitchd.pid'}",
            f"--unixctl={self.vswitchd_ctl}", f"--log-file={self.vswitchd_log}",
            "-vconsole:off", "--detach", "--no-chdir",
        ]  # fmt: skip
        self._detach(argv, self.vswitchd_log)
        ref = self.vswitchd_ref
        if ref is None:
            raise LabError(f"ovs-vswitchd did not start:\n{_tail(self.vswitchd_log)}")
        return ref

    def kill_vswitchd(self, sig: int = signal.SIGKILL) -> None:
        """Signal ``ovs-vswitchd`` by its recorded PID and wait for it to exit (a crash when
        ``sig`` is SIGKILL: flows are lost, the database and the tap devices stay)."""
        kill_process(self.vswitchd_ref, sig)

    def restart_vswitchd(self, sig: int = signal.SIGKILL) -> ProcRef:
        self.kill_vswitchd(sig)
        return self.start_vswitchd()

    def _detach(self, argv: Sequence[str], log: Path) -> None:
        proc = popen_in_netns(
            self.netns, argv, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            _, err = proc.communicate(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise LabError(f"{argv[0]} did not detach in {START_TIMEOUT}s:\n{_tail(log)}") from None
        if proc.returncode != 0:
            msg = err.decode(errors="replace").strip()
            raise LabError(f"{argv[0]} failed (exit {proc.returncode}): {msg}\n{_tail(log)}")

    # -- tools (diagnostics and tests; the agent itself uses the IDL) ---------------------------
    def vsctl(self, *args: str) -> str:
        return _run(
            ["ovs-vsctl", f"--timeout={TOOL_TIMEOUT}", f"--db={self.db_url}", *args], self.env
        )

    def ofctl(self, *args: str) -> str:
        return _run(["ovs-ofctl", *args], self.env)

    def appctl(self, *args: str) -> str:
        return _run(["ovs-appctl", "-t", str(self.vswitchd_ctl), *args], self.env)

    # -- stop -----------------------------------------------------------------------------------
    def stop(self, remove_workdir: bool = False) -> None:
        """Delete this instance's bridges, stop both daemons; optionally remove ``workdir``.
        Idempotent; never raises."""
        stop_workdir(self.workdir, remove_workdir=remove_workdir)


def start(netns: str | None, workdir: Path) -> OvsInstance:
    """Create ``workdir``, a fresh database and both daemons inside ``netns``.

    Refuses (``LabError``) when ``workdir`` already holds a running instance or its socket paths
    would be too long. On failure, everything started is stopped again."""
    workdir = _private(workdir)
    if len(str(workdir / "ovs-vswitchd.12345.ctl")) > _SOCKET_PATH_MAX:
        raise LabError(f"OVS workdir {workdir} is too long for unix socket paths")
    inst = OvsInstance(netns, workdir)
    if inst.ovsdb_ref is not None or inst.vswitchd_ref is not None:
        raise LabError(f"an OVS instance is already running in {workdir}")
    if not SCHEMA.exists():
        raise LabError(f"{SCHEMA} not found: install the Debian package openvswitch-switch")
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "conf.db"
    try:
        db.unlink(missing_ok=True)
        _run(["ovsdb-tool", "create", str(db), str(SCHEMA)], inst.env)
        log = workdir / "ovsdb-server.log"
        argv = [
            "ovsdb-server", str(db), f"--remote=punix:{workdir / 'db.sock'}",
            f"--pidfile={workdir / 'ovsdb-server.pid'}",
            f"--unixctl={workdir / 'ovsdb-server.ctl'}", f"--log-file={log}",
            "-vconsole:off", "--detach", "--no-chdir",
        ]  # fmt: skip
        inst._detach(argv, log)
        inst.vsctl("--no-wait", "init")
        inst.start_vswitchd()
    except BaseException:
        inst.stop()
        raise
    return inst


def _bridges(inst: OvsInstance) -> list[str]:
    try:
        return inst.vsctl("--no-wait", "list-br").split()
    except LabError:
        return []


def stop_workdir(workdir: Path, remove_workdir: bool = False, timeout: float = 5.0) -> list[str]:
    """Stop the instance whose pidfiles are in ``workdir`` (see ``OvsInstance.stop``); return
    a line for each daemon still running after ``timeout`` (none: ``[]``).

    Bridges are deleted first while ``ovs-vswitchd`` still runs, which removes the userspace
    datapath's tap devices (after a crash they would otherwise stay in the namespace). Never
    raises (apart from ``LabError`` for the system instance's directory, which is never
    touched); a daemon that ignores SIGTERM is killed after ``timeout``."""
    inst = OvsInstance(None, _private(workdir))
    db, vs = inst.ovsdb_ref, inst.vswitchd_ref
    if db is not None and vs is not None and is_running(vs):
        for br in _bridges(inst):
            with contextlib.suppress(LabError):
                inst.vsctl("--if-exists", "del-br", br)
    stop_process(vs, timeout)
    stop_process(db, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(r is not None and is_running(r) for r in (vs, db)):
        time.sleep(0.02)
    if remove_workdir:
        shutil.rmtree(inst.workdir, ignore_errors=True)
    left = (("ovsdb-server", db), ("ovs-vswitchd", vs))
    return [f"{n} (pid {r.pid}) of {workdir} still runs"
            for n, r in left if r is not None and is_running(r)]  # fmt: skip

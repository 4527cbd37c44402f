"""``EtcdServer``: a real, private etcd server process for tests, the lab and benchmarks.

Each instance owns one data directory and one pair of ports, and controls its process only by
PID (never by name), so several servers and other people's etcds can coexist on one machine.
``make_test_pki`` creates a throw-away CA with a server and a client certificate through the
``openssl`` CLI, for TLS tests.

Not thread-safe: drive one instance from one thread. The child is started with
``PR_SET_PDEATHSIG`` so it dies with the thread that started it (no orphan etcd after a crashed
test run); start it from a long-lived thread, e.g. the main thread.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ETCD_BINARY = "/usr/bin/etcd"
START_TIMEOUT = 10.0

_PR_SET_PDEATHSIG = 1
_live: weakref.WeakSet[EtcdServer] = weakref.WeakSet()


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """File paths of a throw-away PKI: CA, server cert/key (SAN 127.0.0.1), client cert/key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def in_dir(cls, d: Path) -> ServerTLS:
        """The files ``make_test_pki`` writes in ``d``."""
        return cls(
            d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def make_test_pki(
    directory: Path,
    host: str = "127.0.0.1",
    client_cn: str = "heddle",
    identities: Sequence[str] = (),
    nameless: Sequence[str] = (),
) -> ServerTLS:
    """Create a CA, a server certificate for ``host`` (an IP address, or several separated by
    commas) and a client certificate with CN ``client_cn`` in ``directory``; plus one client
    certificate per name in ``identities`` (``<name>.crt``/``<name>.key``, CN = the name: etcd's
    user when authentication is on, see ``identity_files``); and one per name in ``nameless``
    with no CN at all (subject ``O=<name>``): etcd's JSON gateway refuses a client certificate
    that has a CN, since it could not honour it, and authenticates by token instead.

    For tests and the lab only: keys are unencrypted, valid one day. Raises ``RuntimeError`` if
    openssl fails."""
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "1", "-subj", "/CN=heddle-test-ca", cwd=d)  # fmt: skip
    sans = ",".join(f"IP:{ip.strip()}" for ip in host.split(","))
    (d / "server.ext").write_text(
        f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    issued = [("server", "/CN=heddle-etcd", "server"), ("client", f"/CN={client_cn}", "client")]
    issued += [(cn, f"/CN={cn}", "client") for cn in identities]
    issued += [(name, f"/O={name}", "client") for name in nameless]
    for name, subject, ext in issued:
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", subject, cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile",
                 f"{ext}.ext", cwd=d)  # fmt: skip
    return ServerTLS.in_dir(d)


def identity_files(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """(CA, certificate, key) of identity ``name`` issued by ``make_test_pki``."""
    return directory / "ca.crt", directory / f"{name}.crt", directory / f"{name}.key"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class EtcdServer:
    """One single-member etcd 3.4 server on ``host:client_port`` with its own data directory.

    ``start()`` waits until the server answers its health endpoint and raises ``RuntimeError``
    with the tail of its log otherwise. ``restart()`` keeps data and ports. Progress
    notifications are sent every ``progress_notify_interval`` (etcd's default is 10 min; watchers
    use them to advance their revision while nothing changes).
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        tls: ServerTLS | None = None,
        netns: str | None = None,
        progress_notify_interval: str = "1s",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.client_port = client_port if client_port is not None else free_port(host)
        self.peer_port = peer_port if peer_port is not None else free_port(host)
        # ports we picked may be taken by someone else before etcd binds them (free_port can
        # only tell they were free a moment ago): until the first start, pick again then
        self._pick_ports = (client_port is None, peer_port is None)
        self._started = False
        self.tls = tls
        self.netns = netns
        self.progress_notify_interval = progress_notify_interval
        self.extra_args = tuple(extra_args)
        self.log_path = self.data_dir / "etcd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen = False

    # -- properties ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------------------------
    def _command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        cmd = [
            ETCD_BINARY,
            "--name", "heddle",
            "--data-dir", str(self.data_dir / "data"),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"heddle={peer}",
            "--initial-cluster-state", "new",
            "--experimental-watch-progress-notify-interval", self.progress_notify_interval,
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        if self.tls is not None:
            cmd += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca_cert),
                "--client-cert-auth",
            ]  # fmt: skip
        cmd += self.extra_args
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]  # exec keeps the PID
        return cmd

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn etcd and wait until it is healthy. Idempotent while running. On its first
        start, a port this object picked that someone else took meanwhile is picked again (up
        to three times); ports given by the caller are never changed."""
        if self.running:
            return
        for attempt in range(3):
            try:
                self._start(timeout)
                self._started = True
                return
            except RuntimeError as exc:
                taken = "address already in use" in str(exc)
                if self._started or not taken or not any(self._pick_ports) or attempt == 2:
                    raise
                if self._pick_ports[0]:
                    self.client_port = free_port(self.host)
                if self._pick_ports[1]:
                    self.peer_port = free_port(self.host)

    def _start(self, timeout: float) -> None:
        if not Path(ETCD_BINARY).exists():
            raise RuntimeError(f"{ETCD_BINARY} is missing (Debian package etcd-server)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        self._frozen = False
        _live.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"etcd exited at start (rc={self._rc()}):\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"etcd at {self.url} not healthy within {timeout}s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        """True if the server answers ``/health`` with ``"health": "true"`` within 1 s."""
        if self.netns is not None:
            return self._healthy_in_netns()
        ctx: ssl.SSLContext | None = None
        if self.tls is not None:
            ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
            ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1.0, context=ctx) as r:
                body = json.loads(r.read())
        except (OSError, ValueError):
            return False
        return bool(body.get("health") == "true")

    def _healthy_in_netns(self) -> bool:
        assert self.netns is not None
        cmd = ["ip", "netns", "exec", self.netns, "etcdctl", "--endpoints", self.url,
               "--dial-timeout=1s", "--command-timeout=1s", "endpoint", "health"]  # fmt: skip
        if self.tls is not None:
            cmd += ["--cacert", str(self.tls.ca_cert), "--cert", str(self.tls.client_cert),
                    "--key", str(self.tls.client_key)]  # fmt: skip
        env = {**os.environ, "ETCDCTL_API": "3"}
        r = subprocess.run(cmd, capture_output=True, env=env, check=False, timeout=5)
        return r.returncode == 0

    def _rc(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def _signal(self, sig: signal.Signals) -> None:
        if self.running and self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, wait up to ``timeout``, then SIGKILL. Idempotent; never raises."""
        if self._proc is None:
            return
        if self._frozen:
            self.thaw()
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self._proc.wait()
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL by PID and reap it (a crash: no clean shutdown). Idempotent."""
        if self._proc is None:
            return
        self._signal(signal.SIGKILL)
        self._proc.wait()
        self._frozen = False
        _live.discard(self)

    def freeze(self) -> None:
        """SIGSTOP: the process hangs but the kernel still accepts TCP (a silent partition)."""
        self._signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT after ``freeze()``."""
        self._signal(signal.SIGCONT)
        self._frozen = False

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop (if running) and start again with the same data directory and ports."""
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        server.kill()

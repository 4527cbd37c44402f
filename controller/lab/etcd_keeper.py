"""A tiny supervisor process that keeps the lab's ``EtcdServer`` alive between CLI invocations.

Why: ``EtcdServer`` starts etcd with ``PR_SET_PDEATHSIG`` so it never outlives the thread that
started it (no orphan etcd after a crashed test). ``heddle lab up`` must return while etcd keeps
running, so the lab starts this keeper in its own session; the keeper owns the server, writes
``{"pid", "url"}`` of etcd to ``--ready-file`` once it is healthy, and stops it cleanly on
SIGTERM/SIGINT. If the keeper is SIGKILLed, etcd dies with it (the death signal), so a lab can
never leak an etcd. On a start failure the ready file gets ``{"error": ...}`` and the exit code
is 1.

The lab starts it with ``spawn`` and waits with ``await_ready``; by hand:
``python -m controller.lab.etcd_keeper --data-dir D --host IP --ready-file F
[--also-listen IP] [--tls-dir PKI]`` (``PKI``: from ``make_test_pki``; etcd then speaks TLS and
requires client certificates).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from controller.lab.etcd_server import EtcdServer, ServerTLS, free_port
from controller.lab.nsutil import LabError, child_env, log_tail, popen_in_netns

READY_FILE = "etcd.ready"
LOG_FILE = "etcd-keeper.log"


def _write_atomic(path: Path, obj: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def spawn(workdir: Path, host: str, tls_dir: str | None = None) -> subprocess.Popen[bytes]:
    """Start a keeper for an etcd on ``host`` (and 127.0.0.1) with its data, ready file and log
    in ``workdir``, in a session of its own (it outlives the caller); ``tls_dir``: a PKI of
    ``make_test_pki``. Returns at once: ``await_ready`` waits for etcd."""
    ready = workdir / READY_FILE
    ready.unlink(missing_ok=True)
    argv = [
        sys.executable, "-m", "controller.lab.etcd_keeper",
        "--data-dir", str(workdir / "etcd"), "--host", host,
        "--ready-file", str(ready), "--also-listen", "127.0.0.1",
        *(["--tls-dir", tls_dir] if tls_dir is not None else []),
    ]  # fmt: skip
    with open(workdir / LOG_FILE, "ab") as log:
        return popen_in_netns(
            None, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=child_env(), cwd=workdir,
        )  # fmt: skip


def await_ready(proc: subprocess.Popen[bytes], workdir: Path, timeout: float) -> tuple[int, str]:
    """etcd's (PID, URL) once the keeper ``proc`` (of ``spawn``) says etcd is healthy. Raises
    ``LabError`` with the keeper's log when it exits first, gives up or takes over ``timeout``
    seconds."""
    ready = workdir / READY_FILE
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"etcd did not start:\n{log_tail(workdir / LOG_FILE)}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    if "error" in info:
        raise LabError(f"etcd did not start: {info['error']}")
    return int(info["pid"]), str(info["url"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controller.lab.etcd_keeper")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--ready-file", type=Path, required=True)
    p.add_argument("--also-listen", default=None, help="a second client address (127.0.0.1)")
    p.add_argument("--tls-dir", type=Path, default=None, help="PKI of make_test_pki: use TLS")
    args = p.parse_args(argv)
    tls = ServerTLS.in_dir(args.tls_dir) if args.tls_dir is not None else None

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    port = free_port(args.host)
    extra: list[str] = []
    scheme = "https" if tls is not None else "http"
    if args.also_listen:
        urls = f"{scheme}://{args.host}:{port},{scheme}://{args.also_listen}:{port}"
        extra = ["--listen-client-urls", urls]  # the last flag wins in etcd's flag parser
    server = EtcdServer(args.data_dir, host=args.host, client_port=port, tls=tls, extra_args=extra)
    try:
        server.start()
    except Exception as exc:
        _write_atomic(args.ready_file, {"error": str(exc)})
        server.kill()
        return 1
    _write_atomic(args.ready_file, {"pid": server.pid, "url": server.url})
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

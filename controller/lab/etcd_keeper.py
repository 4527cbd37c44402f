"""A tiny supervisor process that keeps the lab's ``EtcdServer`` alive between CLI invocations.

Why: ``EtcdServer`` starts etcd with ``PR_SET_PDEATHSIG`` so it never outlives the thread that
started it (no orphan etcd after a crashed test). ``heddle lab up`` must return while etcd keeps
running, so the lab starts this keeper in its own session; the keeper owns the server, writes
``{"pid", "url"}`` of etcd to ``--ready-file`` once it is healthy, and stops it cleanly on
SIGTERM/SIGINT. If the keeper is SIGKILLed, etcd dies with it (the death signal), so a lab can
never leak an etcd. On a start failure the ready file gets ``{"error": ...}`` and the exit code
is 1.

Usage: ``python -m controller.lab.etcd_keeper --data-dir D --host IP --ready-file F
[--also-listen IP] [--tls-dir PKI]`` (``PKI``: from ``make_test_pki``; etcd then speaks TLS and
requires client certificates).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from controller.lab.etcd_server import EtcdServer, ServerTLS, free_port


def _write_atomic(path: Path, obj: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


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

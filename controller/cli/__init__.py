"""The ``heddle`` command line: ``main`` parses (``parser``), picks the verb's module
(``records``, ``status``, ``trace``, ``lab``, ``agent``) and maps errors to exit codes
(``parser.OK`` / ``REFUSED`` / ``USAGE`` / ``UNAVAILABLE``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from controller.cli.parser import OK, REFUSED, UNAVAILABLE, build_parser
from controller.model.errors import HeddleError, StoreRefused, StoreUnavailable
from controller.store.kv import KV
from controller.telemetry.logformat import configure

__all__ = ["OK", "REFUSED", "UNAVAILABLE", "build_parser", "main", "make_kv"]


def make_kv(args: argparse.Namespace) -> KV:
    """The store client for ``args`` (lazy import: the lab and --help need no gRPC)."""
    from controller.store.etcd import EtcdKV, TLSFiles

    urls = [u.strip() for u in args.etcd.split(",") if u.strip()]
    tls = None
    if args.cacert or args.cert or args.key:
        tls = TLSFiles(cacert=args.cacert, cert=args.cert, key=args.key)
    return EtcdKV(urls, tls=tls)


def _store_verbs() -> dict[str, Callable[[argparse.Namespace, KV], int]]:
    from controller.cli import access, cni, records, status, store, trace

    return {
        "access": lambda args, kv: access.apply(args, kv),
        "network": records.network,
        "endpoint": records.endpoint,
        "host": records.host,
        "status": status.status,
        "trace": trace.trace,
        "store": store.store,
        "cni": cni.cni,
    }


def _fail(exc: HeddleError, code: int = REFUSED, what: str = "") -> int:
    print(f"heddle: error: {what}{exc}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    if args.command == "lab":
        from controller.cli.lab import lab

        try:
            return lab(args)
        except HeddleError as exc:
            return _fail(exc)
    if args.command == "agent":
        from controller.agent import load_config
        from controller.cli.agent import run_agent

        try:
            return run_agent(load_config(args))
        except HeddleError as exc:
            return _fail(exc)
    if args.command == "access" and args.action == "show":
        from controller.cli.access import show

        try:
            return show(args)
        except HeddleError as exc:
            return _fail(exc)
    try:
        kv = make_kv(args)
    except HeddleError as exc:
        return _fail(exc)
    try:
        return _store_verbs()[args.command](args, kv)
    except StoreRefused as exc:
        return _fail(exc, REFUSED, "etcd refused: ")
    except StoreUnavailable as exc:
        return _fail(exc, UNAVAILABLE, "etcd unavailable: ")
    except HeddleError as exc:
        return _fail(exc)
    finally:
        kv.close()

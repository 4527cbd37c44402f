"""``heddle cni install``: write a network's CNI configuration list for a host
(``controller/cni/install.py``), after checking in etcd that the network and the host exist;
``heddle cni plugin``: write the ``heddle-cni`` executable into a runtime's plugin directory."""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

from controller.cli.parser import OK
from controller.cni.install import install, install_plugin
from controller.cni.shim import DEFAULT_SOCKET
from controller.desired import DesiredState
from controller.model.errors import NotFound
from controller.store import keys
from controller.store.kv import KV


def cni(args: argparse.Namespace, kv: KV) -> int:
    """``install``: write the configuration list; print its path. Raises ``NotFound`` for a
    network or a host etcd does not know (a list naming them would fail every ADD).
    ``plugin``: write the executable (no etcd): compiled when a C compiler is at hand (a
    runtime starts it two to four times per container), else the script; ``--script`` asks
    for the script. Raises ``PluginBuildError``."""
    if args.action == "plugin":
        path, changed, kind = install_plugin(args.dir, script=args.script)
        return _report(args, path, changed, {"kind": kind})
    DesiredState(kv).get_network(args.network)
    host = args.host or socket.gethostname().split(".")[0].lower()
    if kv.get(keys.host(host)) is None:
        raise NotFound(
            f"host {host!r} is not registered (its agent has not run yet, or give --host)"
        )
    path, changed = install(args.dir, args.network, host, args.socket or DEFAULT_SOCKET)
    return _report(args, path, changed, {"network": args.network, "host": host})


def _report(args: argparse.Namespace, path: Path, changed: bool, extra: dict[str, str]) -> int:
    if args.output == "json":
        print(json.dumps({"path": str(path), "changed": changed, **extra}))
    else:
        print(path)
    return OK

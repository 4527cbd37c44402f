"""Agent configuration: flags, an optional TOML file, and their validation. Pure apart from
reading the file.

Keys of the TOML file are the long flag names with ``_`` (``host``, ``vtep``, ``backend``,
``etcd``, ``resync_interval``, ``underlay_mtu``, ``cacert``, ``cert``, ``key``, ...). Flags given
on the command line win over the file.
"""

from __future__ import annotations

import argparse
import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.model.errors import InvalidRecord
from controller.model.records import BACKENDS, check_label, check_vtep

DRIFT_REPAIR = ("at-once", "resync")
"""``at-once``: the kernel's announcements (and, on ovs, the OVSDB IDL) tell the agent when
someone else changed what it keeps, and the next pass repairs it; ``resync``: only the periodic
resync does (for an operator changing the data plane by hand on purpose, and the tests that
break it to see ``heddle trace`` name the hop)."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    host: str
    vtep: str
    etcd: tuple[str, ...]
    backend: str = "kernel"
    resync_interval: float = 30.0
    underlay_mtu: int | None = None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    ovsdb: str | None = None
    ovs_datapath: str = "system"
    underlay_dev: str | None = None
    plugin_socket: str | None = "/run/docker/plugins/heddle.sock"
    cni_socket: str | None = "/run/heddle/cni.sock"
    allow_link_local_vteps: bool = False
    metrics: str | None = None
    filters: bool = True
    announce: bool = True
    drift_repair: str = "at-once"

    def __post_init__(self) -> None:
        check_label(self.host, "--host")
        check_vtep(self.vtep, "--vtep", allow_link_local=self.allow_link_local_vteps)
        if not isinstance(self.filters, bool):
            raise InvalidRecord("filters must be true or false")
        if not isinstance(self.announce, bool):
            raise InvalidRecord("announce must be true or false")
        if not isinstance(self.allow_link_local_vteps, bool):
            raise InvalidRecord("allow_link_local_vteps must be true or false")
        if self.backend not in BACKENDS:
            raise InvalidRecord(f"--backend {self.backend!r} must be one of {', '.join(BACKENDS)}")
        if not self.etcd:
            raise InvalidRecord("--etcd needs at least one URL")
        if self.drift_repair not in DRIFT_REPAIR:
            raise InvalidRecord(f"--drift-repair must be one of {', '.join(DRIFT_REPAIR)}")
        if not 0.2 <= self.resync_interval <= 3600:
            raise InvalidRecord("--resync-interval must be between 0.2 and 3600 seconds")
        if self.metrics is not None:
            if not isinstance(self.metrics, str):
                raise InvalidRecord("metrics must be a string ADDR:PORT")
            listen_address(self.metrics)

    @property
    def metrics_listen(self) -> tuple[str, int] | None:
        """``--metrics`` as ``(addr, port)``, or None when not served."""
        return None if self.metrics is None else listen_address(self.metrics)

    @property
    def metrics_advertised(self) -> str | None:
        """Where other hosts and the CLI reach the metrics port (published in the status
        record): ``--metrics`` as given, or ``<vtep>:PORT`` when it binds every address."""
        listen = self.metrics_listen
        if listen is None:
            return None
        addr, port = listen
        if addr in ("0.0.0.0", "::", ""):
            return f"{self.vtep}:{port}"
        return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def listen_address(value: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6) -> ``(addr, port)``. Pure.

    Raises ``InvalidRecord`` (a usage error: retrying cannot help) for anything else."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRecord(f"--metrics {value!r} must be ADDR:PORT (port 1-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InvalidRecord(f"--metrics {value!r}: {host!r} is not an IP address") from None
    return host, int(port)


_FLAG_KEYS = {
    "host_name": "host",
    "vtep": "vtep",
    "backend": "backend",
    "underlay_mtu": "underlay_mtu",
    "resync_interval": "resync_interval",
    "ovsdb": "ovsdb",
    "ovs_datapath": "ovs_datapath",
    "underlay_dev": "underlay_dev",
    "plugin_socket": "plugin_socket",
    "cni_socket": "cni_socket",
    "allow_link_local_vteps": "allow_link_local_vteps",
    "metrics": "metrics",
    "drift_repair": "drift_repair",
}


def load_config(args: argparse.Namespace) -> AgentConfig:
    """Merge the TOML file (if any) and the flags into a validated ``AgentConfig``.

    Raises ``InvalidRecord`` for a missing/unknown/ill-typed setting or an unreadable file.
    """
    values: dict[str, Any] = {}
    if args.config:
        try:
            values.update(tomllib.loads(Path(args.config).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidRecord(f"cannot read config {args.config}: {exc}") from None
    known = set(AgentConfig.__dataclass_fields__) | {"no_plugin", "no_cni"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidRecord(f"config {args.config}: unknown setting(s) {', '.join(unknown)}")
    for flag, key in _FLAG_KEYS.items():
        v = getattr(args, flag, None)
        if v is not None:
            values[key] = v
    if isinstance(values.get("etcd"), str):
        values["etcd"] = values["etcd"].split(",")
    values.setdefault("etcd", args.etcd.split(","))
    values["etcd"] = tuple(u.strip() for u in values["etcd"] if u.strip())
    for tls in ("cacert", "cert", "key"):
        if getattr(args, tls, None):
            values[tls] = getattr(args, tls)
    if getattr(args, "no_filters", None):
        values["filters"] = False
    if getattr(args, "no_announce", None):
        values["announce"] = False
    if values.pop("no_plugin", False) or args.no_plugin:
        values["plugin_socket"] = None
    if values.pop("no_cni", False) or getattr(args, "no_cni", None):
        values["cni_socket"] = None
    for required in ("host", "vtep"):
        if required not in values:
            raise InvalidRecord(f"--{required} is required (or set it in --config)")
    try:
        return AgentConfig(**values)
    except TypeError as exc:
        raise InvalidRecord(f"bad agent setting: {exc}") from None

"""The CNI specification as heddle's plugin speaks it: versions, error codes, the invocation
(environment + network configuration) and results. Pure; the standard library only (and
``controller/model/errors.py``), because the ``heddle-cni`` executable
(``controller/cni/shim.py``) imports it on every call and a container start pays for every
import.

What a runtime gives (CNI 1.0.0): ``CNI_COMMAND`` (ADD, DEL, CHECK, VERSION; 1.1 adds GC and
STATUS), ``CNI_CONTAINERID``, ``CNI_NETNS`` (any path to a namespace file), ``CNI_IFNAME``,
``CNI_ARGS`` (``K=V;K=V``), ``CNI_PATH``, and the network configuration on stdin. Which of them
each command needs is ``REQUIRED`` below; a missing one is error 4, a configuration that is not
JSON error 6, one heddle cannot serve error 7, a version it does not speak error 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from controller.cni import shim
from controller.model.errors import HeddleError

#: CHECK exists from 0.4.0 on, GC and STATUS from 1.1.0 on.
SINCE = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "VERSION": (),
    "GC": (),
    "STATUS": (),
}

#: Versions whose configurations and results heddle reads and writes.
SUPPORTED_VERSIONS = shim.SUPPORTED_VERSIONS
# The specification's well-known error codes (0-99 are its own; 100+ are the plugin's). Those
# the executable reports by itself are defined there (``controller/cni/shim.py``).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = shim.INVALID_ENVIRONMENT
IO_FAILURE = shim.IO_FAILURE
UNDECODABLE = shim.UNDECODABLE
INVALID_CONFIG = shim.INVALID_CONFIG
TRY_AGAIN_LATER = shim.TRY_AGAIN_LATER
NOT_AVAILABLE = 50  # STATUS: the plugin cannot serve ADD now
# heddle's own
EXHAUSTED = 100  # the network has no free address
CONFLICT = 101  # the address, the interface or the record is someone else's
DRIFTED = 102  # CHECK: the interface is not what the record says

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")


class CniError(HeddleError):
    """A CNI error object: ``code`` (see above), ``msg``, ``details``. Whether retrying can help
    is the code's meaning (11 and 50 may; the others need another request or configuration)."""

    def __init__(self, code: int, msg: str, details: str = "", version: str = "1.0.0") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details, self.version = code, msg, details, version

    def to_json(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def at_least(version: str, since: str) -> bool:
    """Whether ``version`` is ``since`` or newer (both ``X.Y.Z``). Pure."""
    return _vkey(version) >= _vkey(since)


class Invocation:
    """One call of the plugin: the command, its environment and its configuration. (A plain
    class, not a dataclass: ``dataclasses`` costs the executable 7 ms of imports per call.)"""

    __slots__ = ("args", "command", "config", "container", "ifname", "netns", "version")

    def __init__(
        self,
        command: str,
        version: str,
        config: Mapping[str, Any],
        container: str = "",
        netns: str = "",
        ifname: str = "",
        args: Mapping[str, str] | None = None,
    ) -> None:
        self.command, self.version, self.config = command, version, config
        self.container, self.netns, self.ifname = container, netns, ifname
        self.args: Mapping[str, str] = args if args is not None else {}

    @property
    def network(self) -> str:
        """The heddle network: the configuration's ``network``, else its ``name``."""
        name = self.config.get("network", self.config.get("name"))
        return name if isinstance(name, str) else ""


def parse_args(raw: str) -> dict[str, str]:
    """``CNI_ARGS`` (``K=V;K=V``) as a dict. Raises ``CniError`` (4) on a pair without '='."""
    out: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {pair!r} is not KEY=VALUE")
        out[k] = v
    return out


def parse_invocation(env: Mapping[str, str], stdin: bytes) -> Invocation:
    """The invocation from the environment and stdin. Pure; raises ``CniError`` with the
    specification's code for what is missing or wrong (see the module docstring)."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(
            INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}"
        )
    try:
        config = shim.load_config(stdin)
    except shim.ShimError as exc:
        raise CniError(exc.code, exc.msg, exc.details) from None
    version = config.get("cniVersion", "0.3.0" if command != "VERSION" else "1.0.0")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    since = SINCE.get(command)
    if since is not None and not at_least(version, since):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion {since} or newer")
    missing = [k for k in REQUIRED[command] if not env.get(k)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"{command} needs {', '.join(missing)}")
    container = env.get("CNI_CONTAINERID", "")
    if container and not _CONTAINER_ID.match(container):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID {container[:80]!r} is not valid")
    ifname = env.get("CNI_IFNAME", "")
    if ifname and not _IFNAME.match(ifname):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname[:80]!r} is not an interface name")
    inv = Invocation(
        command, version, config, container, env.get("CNI_NETNS", ""), ifname,
        parse_args(env.get("CNI_ARGS", "")),
    )  # fmt: skip
    if command not in ("VERSION",) and config.get("type") not in (None, "heddle", "heddle-cni"):
        raise CniError(INVALID_CONFIG, f"type {config.get('type')!r} is not heddle's")
    if command in ("ADD", "DEL", "CHECK", "GC") and not inv.network:
        raise CniError(INVALID_CONFIG, "the configuration names no heddle network (network)")
    return inv


def result_in(version: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """A 1.x ``result`` as ``version`` writes it: before 1.0.0 every IP also says
    ``"version": "4"``. Pure."""
    out = dict(result)
    out["cniVersion"] = version
    if not at_least(version, "1.0.0"):
        out["ips"] = [{**ip, "version": "4"} for ip in result.get("ips", [])]
    return out


def add_result(
    ifname: str,
    mac: str,
    sandbox: str,
    addresses: Sequence[tuple[str, str | None]],
    dns: Mapping[str, Any] | None = None,
    prev: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """ADD's result (1.0.0 form; ``result_in`` converts it): the interface in its sandbox, its
    addresses (``ip/prefixlen``, one per family) each with its family's gateway, a default
    route via each gateway, and ``dns`` as configured. A ``prev`` result (an earlier plugin of a
    chain) is kept and extended, as the specification asks of a plugin that adds an
    interface. Pure."""
    prev = prev or {}
    interfaces = list(prev.get("interfaces", []))
    ips = list(prev.get("ips", []))
    routes = list(prev.get("routes", []))
    for address, gateway in addresses:
        ip: dict[str, Any] = {"address": address, "interface": len(interfaces)}
        if gateway is not None:
            ip["gateway"] = gateway
            routes.append({"dst": "::/0" if ":" in gateway else "0.0.0.0/0", "gw": gateway})
        ips.append(ip)
    interfaces.append({"name": ifname, "mac": mac, "sandbox": sandbox})
    out: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
    }
    if dns or prev.get("dns"):
        out["dns"] = dict(dns or prev.get("dns") or {})
    return out

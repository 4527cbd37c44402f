"""JSON codec for the public schema.

``encode_*`` are pure and total on valid records. ``decode_*`` take the raw bytes/str read from
etcd and return a validated record or raise ``InvalidRecord`` naming the problem; they never raise
anything else, so a bad value written by any etcd client can be logged and skipped.
"""

from __future__ import annotations

import json
from typing import Any

from controller.model.errors import InvalidRecord
from controller.model.records import Alive, Endpoint, Host, HostStatus, Network

_NETWORK_FIELDS = {"name", "vni", "subnet", "gateway", "mtu"}
_ENDPOINT_FIELDS = {"id", "network", "host", "ip", "mac", "netns", "ifname"}
_HOST_FIELDS = {"name", "vtep", "underlay_mtu", "backend", "version"}


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _object(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRecord(f"{what}: invalid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidRecord(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _require(obj: dict[str, Any], fields: set[str], required: set[str], what: str) -> None:
    missing = sorted(required - obj.keys())
    if missing:
        raise InvalidRecord(f"{what}: missing field(s) {', '.join(missing)}")
    unknown = sorted(obj.keys() - fields)
    if unknown:
        raise InvalidRecord(f"{what}: unknown field(s) {', '.join(unknown)}")


def encode_network(n: Network) -> str:
    return _dumps(
        {"name": n.name, "vni": n.vni, "subnet": n.subnet, "gateway": n.gateway, "mtu": n.mtu}
    )


def decode_network(raw: bytes | str) -> Network:
    o = _object(raw, "network")
    _require(o, _NETWORK_FIELDS, {"name", "vni", "subnet"}, "network")
    try:
        return Network(o["name"], o["vni"], o["subnet"], o.get("gateway"), o.get("mtu"))
    except InvalidRecord as exc:
        raise InvalidRecord(f"network: {exc}") from None


def encode_endpoint(e: Endpoint) -> str:
    return _dumps(
        {
            "id": e.id,
            "network": e.network,
            "host": e.host,
            "ip": e.ip,
            "mac": e.mac,
            "netns": e.netns,
            "ifname": e.ifname,
        }
    )


def decode_endpoint(raw: bytes | str) -> Endpoint:
    o = _object(raw, "endpoint")
    _require(o, _ENDPOINT_FIELDS, {"id", "network", "host", "ip", "mac"}, "endpoint")
    try:
        return Endpoint(
            o["id"],
            o["network"],
            o["host"],
            o["ip"],
            o["mac"],
            o.get("netns"),
            o.get("ifname", "eth0"),
        )
    except InvalidRecord as exc:
        raise InvalidRecord(f"endpoint: {exc}") from None


def encode_host(h: Host) -> str:
    return _dumps(
        {
            "name": h.name,
            "vtep": h.vtep,
            "underlay_mtu": h.underlay_mtu,
            "backend": h.backend,
            "version": h.version,
        }
    )


def decode_host(raw: bytes | str) -> Host:
    o = _object(raw, "host")
    _require(o, _HOST_FIELDS, {"name", "vtep"}, "host")
    try:
        return Host(
            o["name"],
            o["vtep"],
            o.get("underlay_mtu", 1500),
            o.get("backend", "kernel"),
            o.get("version", ""),
        )
    except InvalidRecord as exc:
        raise InvalidRecord(f"host: {exc}") from None


def encode_alive(a: Alive) -> str:
    return _dumps({"since": a.since, "pid": a.pid})


def decode_alive(raw: bytes | str) -> Alive:
    o = _object(raw, "alive")
    since, pid = o.get("since"), o.get("pid")
    if not isinstance(since, int | float) or not isinstance(pid, int):
        raise InvalidRecord("alive: needs numeric 'since' and integer 'pid'")
    return Alive(float(since), pid)


def encode_status(s: HostStatus) -> str:
    return _dumps(
        {
            "host": s.host,
            "revision": s.revision,
            "last_pass": s.last_pass,
            "ok": s.ok,
            "changes": s.changes,
            "errors": list(s.errors),
            "skipped": list(s.skipped),
        }
    )


def decode_status(raw: bytes | str) -> HostStatus:
    o = _object(raw, "status")
    try:
        return HostStatus(
            str(o["host"]),
            int(o["revision"]),
            float(o["last_pass"]),
            bool(o["ok"]),
            int(o.get("changes", 0)),
            tuple(str(x) for x in o.get("errors", ())),
            tuple(str(x) for x in o.get("skipped", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRecord(f"status: {exc!r}") from None


def encode_owner(owner: str) -> str:
    """The value of a uniqueness guard key (``vnis/<vni>``, ``ipam/<net>/<ip>``): a JSON string."""
    return _dumps(owner)


def decode_owner(raw: bytes | str) -> str:
    """Decode a guard value; accepts a JSON string or, leniently, a bare word written by hand."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        return text.strip()
    return value if isinstance(value, str) else _dumps(value)

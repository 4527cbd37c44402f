"""JSON codec for the public schema.

``encode_*`` are pure and total on valid records. ``decode_*`` take the raw bytes/str read from
etcd and return a validated record or raise ``InvalidRecord`` naming the problem; they never raise
anything else, so a bad value written by any etcd client can be logged and skipped.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from controller.model.errors import InvalidRecord, brief
from controller.model.json_value import load_object, load_value
from controller.model.records import (
    Alive,
    Endpoint,
    Host,
    HostStatus,
    Network,
    clip_reasons,
)

_NETWORK_FIELDS = {"name", "vni", "subnet", "gateway", "mtu", "egress", "subnet6", "gateway6"}
_ENDPOINT_FIELDS = {"id", "network", "host", "ip", "mac", "netns", "ifname", "container", "ip6"}
_HOST_FIELDS = {"name", "vtep", "underlay_mtu", "backend", "version"}
#: A status record of an older agent may list every skipped reason: allow more than a record.
_MAX_STATUS_BYTES = 4 * 1024 * 1024


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


D = TypeVar("D")


def _total(decode: Callable[[bytes | str], D]) -> Callable[[bytes | str], D]:
    """Make a decoder total: anything but ``InvalidRecord`` escaping it (a validation bug met
    by some byte sequence) becomes ``InvalidRecord`` too, so no caller can be stopped by it."""

    @functools.wraps(decode)
    def wrapper(raw: bytes | str) -> D:
        try:
            return decode(raw)
        except InvalidRecord:
            raise
        except Exception as exc:
            raise InvalidRecord(f"{decode.__name__}: unexpected {type(exc).__name__}") from None

    return wrapper


def _object(raw: bytes | str, what: str) -> dict[str, Any]:
    return load_object(raw, what)


def _require(obj: dict[str, Any], fields: set[str], required: set[str], what: str) -> None:
    missing = sorted(required - obj.keys())
    if missing:
        raise InvalidRecord(f"{what}: missing field(s) {', '.join(missing)}")
    unknown = sorted(obj.keys() - fields)
    if unknown:
        raise InvalidRecord(f"{what}: unknown field(s) {brief(', '.join(unknown))}")


def encode_network(n: Network) -> str:
    """``egress``, ``subnet6`` and ``gateway6`` only when set, ``subnet`` only when the network
    has one: an IPv4 network reads the same to an agent that predates these fields (which
    refuses unknown fields, so it skips -- and reports -- a network it could not realise)."""
    obj: dict[str, object] = {"name": n.name, "vni": n.vni, "gateway": n.gateway, "mtu": n.mtu}
    for name, value in (("subnet", n.subnet), ("egress", n.egress), ("subnet6", n.subnet6),
                        ("gateway6", n.gateway6)):  # fmt: skip
        if value is not None:
            obj[name] = value
    return _dumps(obj)


@_total
def decode_network(raw: bytes | str) -> Network:
    o = _object(raw, "network")
    _require(o, _NETWORK_FIELDS, {"name", "vni"}, "network")
    try:
        return Network(
            o["name"], o["vni"], o.get("subnet"), o.get("gateway"), o.get("mtu"), o.get("egress"),
            o.get("subnet6"), o.get("gateway6"),
        )  # fmt: skip
    except InvalidRecord as exc:
        raise InvalidRecord(f"network: {exc}") from None


def encode_endpoint(e: Endpoint) -> str:
    """``container`` and ``ip6`` only when set, ``ip`` only when the endpoint has one: an IPv4
    endpoint reads the same to an agent that predates these fields (which refuses unknown
    fields)."""
    obj: dict[str, object] = {
        "id": e.id,
        "network": e.network,
        "host": e.host,
        "mac": e.mac,
        "netns": e.netns,
        "ifname": e.ifname,
    }
    for name, value in (("ip", e.ip), ("container", e.container), ("ip6", e.ip6)):
        if value is not None:
            obj[name] = value
    return _dumps(obj)


def encode_placement(e: Endpoint) -> str:
    """The value of ``e``'s placement key: the interface it takes on its host, so a writer
    looking for one interface reads the host's placement keys only (README: the public
    schema). An empty value -- what a release before this one wrote -- is always correct."""
    return _dumps({"netns": e.netns, "ifname": e.ifname})


def decode_placement(raw: bytes | str) -> tuple[str | None, str] | None:
    """``(netns, ifname)`` from a placement key's value; None when it does not say (empty, as
    older writers leave it, or not of that shape): the reader then looks at the endpoint
    record itself. Pure; never raises."""
    if not raw:
        return None
    try:
        o = _object(raw, "placement")
    except InvalidRecord:
        return None
    netns, ifname = o.get("netns"), o.get("ifname")
    if (netns is None or isinstance(netns, str)) and isinstance(ifname, str):
        return netns, ifname
    return None


def endpoint_interface(raw: bytes | str) -> tuple[object, object, object] | None:
    """The ``(host, netns, ifname)`` an endpoint record names (``ifname`` defaulted as
    ``decode_endpoint`` does), read without validating the rest: a third of a full decode's
    cost, for a writer that looks for one interface among a host's endpoints and decodes only
    a match in full. None if ``raw`` is no JSON object. Pure; never raises."""
    try:
        o = _object(raw, "endpoint")
    except InvalidRecord:
        return None
    return o.get("host"), o.get("netns"), o.get("ifname", "eth0")


@_total
def decode_endpoint(raw: bytes | str) -> Endpoint:
    o = _object(raw, "endpoint")
    _require(o, _ENDPOINT_FIELDS, {"id", "network", "host", "mac"}, "endpoint")
    try:
        return Endpoint(
            o["id"],
            o["network"],
            o["host"],
            o.get("ip"),
            o["mac"],
            o.get("netns"),
            o.get("ifname", "eth0"),
            o.get("container"),
            o.get("ip6"),
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


@_total
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


@_total
def decode_alive(raw: bytes | str) -> Alive:
    o = _object(raw, "alive")
    since, pid = o.get("since"), o.get("pid")
    if (
        not isinstance(since, int | float)
        or isinstance(since, bool)
        or not math.isfinite(since)
        or not isinstance(pid, int)
        or isinstance(pid, bool)
    ):
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
            "skipped_count": s.skipped_count,
            "stuck": s.stuck,
            **({"metrics": s.metrics} if s.metrics else {}),
            **({"notices": list(s.notices)} if s.notices else {}),
        }
    )


def _status_int(o: dict[str, Any], name: str, default: int | None = None) -> int:
    v = o.get(name, default)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 63:
        raise InvalidRecord(f"status: {name} must be a non-negative integer")
    return v


def _status_texts(o: dict[str, Any], name: str) -> tuple[str, ...]:
    v = o.get(name, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidRecord(f"status: {name} must be a list of strings")
    return clip_reasons(v)


@_total
def decode_status(raw: bytes | str) -> HostStatus:
    """Decode a status record, clipping its reason lists (``clip_reasons``); total like every
    decoder here. Records of older agents (no ``skipped_count``/``stuck``) read as well."""
    o = load_object(raw, "status", _MAX_STATUS_BYTES)
    host, last_pass, ok, stuck = o.get("host"), o.get("last_pass"), o.get("ok"), o.get("stuck")
    if not isinstance(host, str) or len(host) > 63:
        raise InvalidRecord("status: host must be a host name")
    if not isinstance(last_pass, int | float) or isinstance(last_pass, bool):
        raise InvalidRecord("status: last_pass must be a number")
    if not isinstance(ok, bool):
        raise InvalidRecord("status: ok must be true or false")
    if stuck is not None and not isinstance(stuck, str):
        raise InvalidRecord("status: stuck must be a string or null")
    metrics = o.get("metrics")
    if metrics is not None and (not isinstance(metrics, str) or len(metrics) > 64):
        raise InvalidRecord("status: metrics must be ADDR:PORT or absent")
    skipped_all = o.get("skipped", [])
    skipped = _status_texts(o, "skipped")
    return HostStatus(
        host,
        _status_int(o, "revision"),
        float(last_pass),
        ok,
        _status_int(o, "changes", 0),
        _status_texts(o, "errors"),
        skipped,
        _status_int(o, "skipped_count", len(skipped_all)),
        clip_reasons([stuck])[0] if stuck else None,
        metrics,
        _status_texts(o, "notices"),
    )


def encode_owner(owner: str) -> str:
    """The value of a uniqueness guard key (``vnis/<vni>``, ``ipam/<net>/<ip>``): a JSON string."""
    return _dumps(owner)


def decode_owner(raw: bytes | str) -> str:
    """Decode a guard value; accepts a JSON string or, leniently, a bare word written by hand.

    Total: any other JSON value comes back as its compact JSON text, undecodable bytes as text
    with replacement characters; at most ``MAX_RECORD_BYTES`` of it."""
    try:
        value = load_value(raw, "owner")
    except InvalidRecord:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        return text[:1024].strip()
    if isinstance(value, str):
        return value
    try:
        return _dumps(value)
    except (RecursionError, ValueError):
        return brief(value)


def encode_layout(placement: bool) -> str:
    """The value of ``/heddle/v1/layout``: which optional parts of the layout the store keeps."""
    return _dumps({"placement": placement})


@_total
def decode_layout(raw: bytes | str) -> bool:
    """Whether the layout record says every endpoint has its placement key (written by
    ``heddle store upgrade`` once the index is complete). Unknown fields are ignored (a later
    release may add parts); raises ``InvalidRecord`` for anything but an object whose
    ``placement`` is a boolean, and the reader then keeps the safe, unindexed way."""
    obj = _object(raw, "layout")
    value = obj.get("placement", False)
    if not isinstance(value, bool):
        raise InvalidRecord("layout: placement must be true or false")
    return value

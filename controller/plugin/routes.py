"""The routing table of the remote API (path -> parser + handler) and the dispatcher.

``build_routes`` is the ONE place that says which handler serves which path;
tests/unit/test_plugin_routes.py proves that every method of the remote API is in it.
``AllocateNetwork``/``FreeNetwork`` (swarm only) are deliberately absent: dockerd accepts 404.

``dispatch`` turns a raw body into a ``Reply``: the handler's answer (200), or an error object in
the interface's style -- ``{"Err": msg}`` for Plugin/NetworkDriver, ``{"Error": msg}`` for
IpamDriver (plus ``Err``: dockerd's plugin client shows ``Err`` of any non-200 answer verbatim
and would otherwise print the raw JSON). Status: 400 malformed body or invalid value, 404 unknown
method, 409 conflict, 500 other refusals and bugs, 503 etcd unavailable. It never raises.
Thread-safe (handlers are).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from controller.model.errors import Conflict, HeddleError, InvalidRecord, StoreUnavailable, brief
from controller.plugin import api, responses
from controller.plugin.ipam_driver import IpamDriver
from controller.plugin.network_driver import NetworkDriver

log = logging.getLogger("heddle.plugin")

Interface = Literal["Plugin", "NetworkDriver", "IpamDriver", "Cni"]
IMPLEMENTS = ("NetworkDriver", "IpamDriver")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Route:
    """How one path is served: its interface (for the error style) and the call."""

    interface: Interface
    call: Callable[[Mapping[str, Any]], responses.Response]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: api.JSONObject


def _route(
    interface: Interface,
    parse: Callable[[Mapping[str, Any]], R],
    handle: Callable[[R], responses.Response],
) -> Route:
    return Route(interface, lambda o: handle(parse(o)))


def _activate(_: api.Empty) -> responses.ActivateResponse:
    return responses.ActivateResponse(IMPLEMENTS)


def _nd(
    parse: Callable[[Mapping[str, Any]], R], handle: Callable[[R], responses.Response]
) -> Route:
    return _route("NetworkDriver", parse, handle)


def _ipam(
    parse: Callable[[Mapping[str, Any]], R], handle: Callable[[R], responses.Response]
) -> Route:
    return _route("IpamDriver", parse, handle)


def build_routes(network: NetworkDriver, ipam: IpamDriver) -> Mapping[str, Route]:
    """The routing table: every path dockerd calls, with its parser and handler."""
    n, i, a = network, ipam, api
    return MappingProxyType(
        {
            "/Plugin.Activate": _route("Plugin", a.Empty.parse, _activate),
            "/NetworkDriver.GetCapabilities": _nd(a.Empty.parse, n.capabilities),
            "/NetworkDriver.CreateNetwork": _nd(a.CreateNetworkRequest.parse, n.create_network),
            "/NetworkDriver.DeleteNetwork": _nd(a.NetworkRequest.parse, n.delete_network),
            "/NetworkDriver.CreateEndpoint": _nd(a.CreateEndpointRequest.parse, n.create_endpoint),
            "/NetworkDriver.DeleteEndpoint": _nd(a.EndpointRequest.parse, n.delete_endpoint),
            "/NetworkDriver.EndpointOperInfo": _nd(a.EndpointRequest.parse, n.endpoint_oper_info),
            "/NetworkDriver.Join": _nd(a.JoinRequest.parse, n.join),
            "/NetworkDriver.Leave": _nd(a.EndpointRequest.parse, n.leave),
            "/NetworkDriver.GwAllocCheck": _nd(a.GwAllocCheckRequest.parse, n.gw_alloc_check),
            "/NetworkDriver.DiscoverNew": _nd(a.DiscoveryRequest.parse, n.discover),
            "/NetworkDriver.DiscoverDelete": _nd(a.DiscoveryRequest.parse, n.discover),
            "/NetworkDriver.ProgramExternalConnectivity": _nd(
                a.EndpointRequest.parse, n.external_connectivity
            ),
            "/NetworkDriver.RevokeExternalConnectivity": _nd(
                a.EndpointRequest.parse, n.external_connectivity
            ),
            "/IpamDriver.GetCapabilities": _ipam(a.Empty.parse, i.capabilities),
            "/IpamDriver.GetDefaultAddressSpaces": _ipam(a.Empty.parse, i.address_spaces),
            "/IpamDriver.RequestPool": _ipam(a.RequestPoolRequest.parse, i.request_pool),
            "/IpamDriver.ReleasePool": _ipam(a.PoolRequest.parse, i.release_pool),
            "/IpamDriver.RequestAddress": _ipam(a.RequestAddressRequest.parse, i.request_address),
            "/IpamDriver.ReleaseAddress": _ipam(a.ReleaseAddressRequest.parse, i.release_address),
        }
    )


def _error(interface: Interface, status: int, message: str, exc: Exception | None = None) -> Reply:
    """The error answer in ``interface``'s style; for ``Cni`` a CNI error object (its ``code``
    and ``details`` when ``exc`` has them, else 999, the code of a failure without one)."""
    body: api.JSONObject = {"Err": message}
    if interface == "IpamDriver":
        body = {"Error": message, "Err": message}
    if interface == "Cni":
        code = getattr(exc, "code", None)
        body = {"cniVersion": str(getattr(exc, "version", "1.0.0")),
                "code": code if isinstance(code, int) else 999, "msg": message,
                "details": str(getattr(exc, "details", ""))}  # fmt: skip
    return Reply(status, body)


def _status(exc: HeddleError) -> int:
    if isinstance(exc, api.BadRequest | InvalidRecord):
        return 400
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, StoreUnavailable):
        return 503
    return 500


OnCall = Callable[[str, int, float], None]
"""Told of every call: method (``NetworkDriver.Join``; ``unknown`` for a path not served),
HTTP status, seconds. Must not raise."""


def dispatch(
    routes: Mapping[str, Route], path: str, body: bytes, on_call: OnCall | None = None
) -> Reply:
    """Serve one call. Never raises; logs one line per call (method, status, milliseconds)
    and tells ``on_call`` (the metrics)."""
    t0 = time.perf_counter()
    route = routes.get(path)
    if route is None:
        iface: Interface = "IpamDriver" if path.startswith("/IpamDriver.") else "NetworkDriver"
        reply = _error(iface, 404, f"unknown plugin method {brief(path)}")
    else:
        try:
            reply = Reply(200, route.call(api.parse_body(body)).to_json())
        except HeddleError as exc:
            reply = _error(route.interface, _status(exc), str(exc), exc)
        except Exception as exc:  # a bug: answer (dockerd has no timeout) and keep serving
            log.exception("plugin %s failed", path)
            reply = _error(route.interface, 500, f"internal error in heddle's plugin: {brief(exc)}")
    seconds = time.perf_counter() - t0
    ms = seconds * 1000
    if on_call is not None:
        on_call(path.lstrip("/") if route is not None else "unknown", reply.status, seconds)
    if reply.status == 200:
        log.info("plugin %s status=200 ms=%.2f", path.lstrip("/"), ms)
    else:
        log.warning(
            "plugin %s status=%d ms=%.2f: %s",
            path.lstrip("/"),
            reply.status,
            ms,
            reply.body.get("Err"),
        )
    return reply

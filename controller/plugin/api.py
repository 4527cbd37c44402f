"""libnetwork remote API: typed requests and responses, and the parsing of request bodies.

Shapes follow what a real dockerd sends (docs/platform.md D2): JSON objects with
Go-style field names, no Content-Type, an *empty* body (not ``{}``) for argument-less calls,
``null`` for absent maps. Parsing is pure and strict about what heddle uses and lenient about the
rest (unknown fields are ignored: newer dockerds add fields). Every refusal is a ``BadRequest``
whose message names the field, e.g. ``missing field EndpointID``.

The responses are ``controller/plugin/responses.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Self

from controller.model.errors import HeddleError, InvalidRecord
from controller.model.json_value import load_value
from controller.plugin.mapping import check_docker_id

JSONObject = dict[str, Any]

#: The option naming the heddle network: ``-o heddle.network=N`` / ``--ipam-opt heddle.network=N``.
NETWORK_OPTION = "heddle.network"
#: Where ``docker network create -o k=v`` options arrive in CreateNetwork's ``Options``.
GENERIC_OPTIONS = "com.docker.network.generic"
#: ``RequestAddress`` option marking the gateway request (``Options.RequestAddressType``).
REQUEST_ADDRESS_TYPE = "RequestAddressType"
GATEWAY_ADDRESS_TYPE = "com.docker.network.gateway"
#: Key in RequestPool's ``Data`` through which an IPAM driver tells libnetwork the gateway (so
#: libnetwork does not ask for one).
GATEWAY_DATA = "com.docker.network.gateway"

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class BadRequest(HeddleError):
    """The request body is not JSON, not an object, or a field is missing or ill-typed.

    The message names the field; the request changed nothing."""


# -- body and field parsing ----------------------------------------------------------------------


def parse_body(body: bytes) -> JSONObject:
    """The request object. An empty body (dockerd's argument-less calls) and ``null`` are ``{}``.

    Raises ``BadRequest`` for invalid JSON/UTF-8, JSON nested too deeply, a body that is not a
    JSON object -- whatever the bytes, nothing else (``json_value.load_value``)."""
    try:
        text = body.decode("utf-8")  # explicit: json.loads would guess UTF-16/32 from the bytes
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not UTF-8: {exc}") from None
    if not text.strip():
        return {}
    try:
        value = load_value(text, "request body is not valid JSON", max_bytes=len(text))
    except InvalidRecord as exc:
        raise BadRequest(str(exc)) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(value).__name__}")
    return value


def _field(o: Mapping[str, Any], name: str, path: str) -> Any:
    if name not in o:
        raise BadRequest(f"missing field {path}{name}")
    return o[name]


def req_str(o: Mapping[str, Any], name: str, path: str = "") -> str:
    """A required, non-empty string field."""
    v = _field(o, name, path)
    if not isinstance(v, str):
        raise BadRequest(f"field {path}{name} must be a string, got {type(v).__name__}")
    if not v:
        raise BadRequest(f"field {path}{name} must not be empty")
    return v


def opt_str(o: Mapping[str, Any], name: str, path: str = "") -> str:
    """An optional string field: absent or ``null`` is ``""``."""
    v = o.get(name)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise BadRequest(f"field {path}{name} must be a string, got {type(v).__name__}")
    return v


def opt_map(o: Mapping[str, Any], name: str, path: str = "") -> Mapping[str, Any]:
    """An optional object field: absent or ``null`` is empty."""
    v = o.get(name)
    if v is None:
        return _EMPTY
    if not isinstance(v, dict):
        raise BadRequest(f"field {path}{name} must be an object, got {type(v).__name__}")
    return MappingProxyType(dict(v))


def opt_bool(o: Mapping[str, Any], name: str, path: str = "") -> bool:
    v = o.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise BadRequest(f"field {path}{name} must be true or false, got {type(v).__name__}")
    return v


def docker_id(o: Mapping[str, Any], name: str) -> str:
    """A required Docker ID field (``NetworkID``, ``EndpointID``)."""
    v = req_str(o, name)
    try:
        return check_docker_id(v, f"field {name}")
    except InvalidRecord as exc:
        raise BadRequest(str(exc)) from None


def str_option(options: Mapping[str, Any], name: str, path: str) -> str | None:
    """A string-valued option (``None`` when absent); ``BadRequest`` when not a string."""
    v = options.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise BadRequest(f"option {path}{name} must be a string, got {type(v).__name__}")
    return v


# -- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Empty:
    """A request without arguments (dockerd sends an empty body); any body is accepted."""

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> Self:
        return cls()


@dataclass(frozen=True, slots=True)
class IPAMData:
    """One entry of CreateNetwork's ``IPv4Data``/``IPv6Data``: what the IPAM driver handed out."""

    address_space: str
    pool: str
    gateway: str  # CIDR form ("10.20.0.1/24") or "" when there is none

    @classmethod
    def parse(cls, o: object, path: str) -> Self:
        if not isinstance(o, dict):
            raise BadRequest(f"field {path} must be an object, got {type(o).__name__}")
        return cls(
            opt_str(o, "AddressSpace", f"{path}."),
            req_str(o, "Pool", f"{path}."),
            opt_str(o, "Gateway", f"{path}."),
        )


def _ipam_data(o: Mapping[str, Any], name: str) -> tuple[IPAMData, ...]:
    v = o.get(name)
    if v is None:
        return ()
    if not isinstance(v, list):
        raise BadRequest(f"field {name} must be a list, got {type(v).__name__}")
    return tuple(IPAMData.parse(item, f"{name}[{i}]") for i, item in enumerate(v))


@dataclass(frozen=True, slots=True)
class CreateNetworkRequest:
    network_id: str
    generic: Mapping[str, Any]  # Options["com.docker.network.generic"]: the -o k=v options
    ipv4: tuple[IPAMData, ...]
    ipv6: tuple[IPAMData, ...]

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> Self:
        options = opt_map(o, "Options")
        generic = opt_map(options, GENERIC_OPTIONS, "Options.")
        return cls(
            docker_id(o, "NetworkID"), generic, _ipam_data(o, "IPv4Data"), _ipam_data(o, "IPv6Data")
        )

    def heddle_network(self) -> str | None:
        return str_option(self.generic, NETWORK_OPTION, f'Options["{GENERIC_OPTIONS}"].')


@dataclass(frozen=True, slots=True)
class NetworkRequest:
    """DeleteNetwork (and AllocateNetwork/FreeNetwork shapes): just the NetworkID."""

    network_id: str

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> Self:
        return cls(docker_id(o, "NetworkID"))


@dataclass(frozen=True, slots=True)
class CreateEndpointRequest:
    network_id: str
    endpoint_id: str
    address: str  # CIDR ("10.20.0.2/24"); "" when Docker sent none
    address_ipv6: str
    mac: str  # "" when Docker leaves the choice to the driver

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> Self:
        iface = opt_map(o, "Interface")
        return cls(
            docker_id(o, "NetworkID"),
            docker_id(o, "EndpointID"),
            opt_str(iface, "Address", "Interface."),
            opt_str(iface, "AddressIPv6", "Interface."),
            opt_str(iface, "MacAddress", "Interface."),
        )


@dataclass(frozen=True, slots=True)
class EndpointRequest:
    """DeleteEndpoint, EndpointOperInfo, Leave, Program/RevokeExternalConnectivity."""

    network_id: str
    endpoint_id: str

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> Self:
        return cls(docker_id(o, "NetworkID"), docker_id(o, "EndpointID"))


@dataclass(frozen=True, slots=True)
class JoinRequest:
    network_id: str
    endpoint_id: str
    sandbox_key: str

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> Self:
        return cls(docker_id(o, "NetworkID"), docker_id(o, "EndpointID"), opt_str(o, "SandboxKey"))


@dataclass(frozen=True, slots=True)
class DiscoveryRequest:
    """DiscoverNew / DiscoverDelete (sent only in swarm mode)."""

    discovery_type: int
    data: Any

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> Self:
        kind = _field(o, "DiscoveryType", "")
        if not isinstance(kind, int) or isinstance(kind, bool):
            raise BadRequest(f"field DiscoveryType must be an integer, got {type(kind).__name__}")
        return cls(kind, o.get("DiscoveryData"))


@dataclass(frozen=True, slots=True)
class RequestPoolRequest:
    address_space: str
    pool: str  # "" when the user gave no --subnet
    sub_pool: str
    options: Mapping[str, Any]  # the --ipam-opt k=v options
    v6: bool

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> Self:
        return cls(
            opt_str(o, "AddressSpace"),
            opt_str(o, "Pool"),
            opt_str(o, "SubPool"),
            opt_map(o, "Options"),
            opt_bool(o, "V6"),
        )

    def heddle_network(self) -> str | None:
        return str_option(self.options, NETWORK_OPTION, "Options.")


@dataclass(frozen=True, slots=True)
class PoolRequest:
    """ReleasePool."""

    pool_id: str

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> Self:
        return cls(req_str(o, "PoolID"))


@dataclass(frozen=True, slots=True)
class RequestAddressRequest:
    pool_id: str
    address: str  # "" for "any free address"
    options: Mapping[str, Any]

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> Self:
        return cls(req_str(o, "PoolID"), opt_str(o, "Address"), opt_map(o, "Options"))

    @property
    def is_gateway(self) -> bool:
        return self.options.get(REQUEST_ADDRESS_TYPE) == GATEWAY_ADDRESS_TYPE


@dataclass(frozen=True, slots=True)
class ReleaseAddressRequest:
    pool_id: str
    address: str

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> Self:
        return cls(req_str(o, "PoolID"), req_str(o, "Address"))


# -- responses -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GwAllocCheckRequest:
    """``NetworkDriver.GwAllocCheck``: the options the network is about to be created with."""

    options: Mapping[str, Any]

    @classmethod
    def parse(cls, o: Mapping[str, Any]) -> Self:
        opts = o.get("Options")
        if opts is not None and not isinstance(opts, Mapping):
            raise BadRequest("field Options must be an object")
        return cls(opts or _EMPTY)

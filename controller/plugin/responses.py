"""libnetwork remote API responses: frozen dataclasses whose ``to_json()`` produces exactly the
documented shape (docs/platform.md D2), one per answer the drivers give
(``controller/plugin/network_driver.py``, ``controller/plugin/ipam_driver.py``). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.plugin.api import JSONObject


class Response(Protocol):
    def to_json(self) -> JSONObject: ...


@dataclass(frozen=True, slots=True)
class Ok:
    """The empty success answer ``{}``."""

    def to_json(self) -> JSONObject:
        return {}


@dataclass(frozen=True, slots=True)
class ActivateResponse:
    implements: tuple[str, ...]

    def to_json(self) -> JSONObject:
        return {"Implements": list(self.implements)}


@dataclass(frozen=True, slots=True)
class NetworkCapabilities:
    """``GwAllocChecker``: the engine (28 and newer; older ones ignore the field) asks
    ``NetworkDriver.GwAllocCheck`` before creating a network whether to reserve gateways."""

    scope: str
    connectivity_scope: str
    gw_alloc_checker: bool = True

    def to_json(self) -> JSONObject:
        return {
            "Scope": self.scope,
            "ConnectivityScope": self.connectivity_scope,
            "GwAllocChecker": self.gw_alloc_checker,
        }


@dataclass(frozen=True, slots=True)
class GwAllocCheckResponse:
    skip_ipv4: bool
    skip_ipv6: bool

    def to_json(self) -> JSONObject:
        return {"SkipIPv4": self.skip_ipv4, "SkipIPv6": self.skip_ipv6}


@dataclass(frozen=True, slots=True)
class CreateEndpointResponse:
    mac: str | None  # returned only when Docker sent none (docs/platform.md D6)

    def to_json(self) -> JSONObject:
        return {"Interface": {"MacAddress": self.mac}} if self.mac else {}


@dataclass(frozen=True, slots=True)
class OperInfoResponse:
    value: Mapping[str, Any]

    def to_json(self) -> JSONObject:
        return {"Value": dict(self.value)}


@dataclass(frozen=True, slots=True)
class JoinResponse:
    src_name: str
    dst_prefix: str
    gateway: str | None  # None: DisableGatewayService (never neither: docker_gwbridge)
    gateway6: str | None = None  # a dual-stack network's IPv6 gateway

    def to_json(self) -> JSONObject:
        out: JSONObject = {
            "InterfaceName": {"SrcName": self.src_name, "DstPrefix": self.dst_prefix}
        }
        if self.gateway is not None:
            out["Gateway"] = self.gateway
        else:
            out["DisableGatewayService"] = True
        if self.gateway6 is not None:
            out["GatewayIPv6"] = self.gateway6
        return out


@dataclass(frozen=True, slots=True)
class IpamCapabilities:
    requires_mac: bool = False
    requires_replay: bool = False

    def to_json(self) -> JSONObject:
        return {
            "RequiresMACAddress": self.requires_mac,
            "RequiresRequestReplay": self.requires_replay,
        }


@dataclass(frozen=True, slots=True)
class AddressSpacesResponse:
    local: str
    global_: str

    def to_json(self) -> JSONObject:
        return {"LocalDefaultAddressSpace": self.local, "GlobalDefaultAddressSpace": self.global_}


@dataclass(frozen=True, slots=True)
class RequestPoolResponse:
    pool_id: str
    pool: str
    data: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> JSONObject:
        return {"PoolID": self.pool_id, "Pool": self.pool, "Data": dict(self.data)}


@dataclass(frozen=True, slots=True)
class RequestAddressResponse:
    address: str  # CIDR form, e.g. "10.20.0.2/24"

    def to_json(self) -> JSONObject:
        return {"Address": self.address, "Data": {}}

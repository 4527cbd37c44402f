"""The plugin's mapping records (Docker IDs -> heddle records) and their JSON codec. Pure.

Records validate on construction (``InvalidRecord`` naming the field), like the public schema's;
``decode_*`` never raise anything else, so a hand-edited value is reported, not a crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from controller.model.errors import InvalidRecord, brief
from controller.model.json_value import load_object
from controller.model.records import check_ipv4, check_ipv6, check_label

_DOCKER_ID = re.compile(r"^[0-9a-f]{12,64}$")


def check_docker_id(value: object, field: str) -> str:
    """Return ``value`` if it looks like a Docker object ID (12-64 lowercase hex characters).

    Strict on purpose: IDs become etcd key components, so a ``/`` must never get through."""
    if not isinstance(value, str) or not _DOCKER_ID.match(value):
        raise InvalidRecord(
            f"{field} {brief(value)} must be a Docker ID (12-64 lowercase hex digits)"
        )
    return value


@dataclass(frozen=True, slots=True)
class DockerNetwork:
    """One dockerd's network ``network_id`` is heddle network ``network``; ``gateway`` and
    ``gateway6`` (a dual-stack network's) are what Docker was told at create time (returned by
    every Join), None for no gateway."""

    network_id: str
    network: str
    gateway: str | None
    gateway6: str | None = None

    def __post_init__(self) -> None:
        check_docker_id(self.network_id, "NetworkID")
        check_label(self.network, "heddle network")
        if self.gateway is not None:
            check_ipv4(self.gateway, "gateway")
        if self.gateway6 is not None:
            check_ipv6(self.gateway6, "gateway6")


@dataclass(frozen=True, slots=True)
class DockerEndpoint:
    """One dockerd's endpoint ``endpoint_id`` (of Docker network ``network_id``) is heddle
    endpoint ``network``/``id``."""

    endpoint_id: str
    network_id: str
    network: str
    id: str

    def __post_init__(self) -> None:
        check_docker_id(self.endpoint_id, "EndpointID")
        check_docker_id(self.network_id, "NetworkID")
        check_label(self.network, "heddle network")
        check_label(self.id, "endpoint id")


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _object(raw: bytes, what: str) -> dict[str, Any]:
    return load_object(raw, what)


def encode_network(m: DockerNetwork) -> bytes:
    """``gateway6`` only when set: an IPv4 network's mapping reads as before."""
    gw6 = {"gateway6": m.gateway6} if m.gateway6 is not None else {}
    return _dumps({"network": m.network, "gateway": m.gateway, **gw6})


def decode_network(network_id: str, raw: bytes) -> DockerNetwork:
    o = _object(raw, "docker network mapping")
    try:
        return DockerNetwork(network_id, o.get("network"), o.get("gateway"), o.get("gateway6"))  # type: ignore[arg-type]
    except InvalidRecord as exc:
        raise InvalidRecord(f"docker network mapping {network_id}: {exc}") from None


def encode_endpoint(m: DockerEndpoint) -> bytes:
    return _dumps({"network_id": m.network_id, "network": m.network, "id": m.id})


def decode_endpoint(endpoint_id: str, raw: bytes) -> DockerEndpoint:
    o = _object(raw, "docker endpoint mapping")
    try:
        return DockerEndpoint(
            endpoint_id,
            o.get("network_id"),  # type: ignore[arg-type]
            o.get("network"),  # type: ignore[arg-type]
            o.get("id"),  # type: ignore[arg-type]
        )
    except InvalidRecord as exc:
        raise InvalidRecord(f"docker endpoint mapping {endpoint_id}: {exc}") from None

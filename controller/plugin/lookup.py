"""Reads shared by the plugin's drivers: a network with its revision, and the Docker mappings.

Each returns ``None`` for an absent key and raises ``InvalidRecord`` for a value that does not
decode (the drivers turn that into a clear error instead of acting on garbage).
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.model import codec
from controller.model.records import Endpoint, Network
from controller.plugin import keys as pkeys
from controller.plugin.mapping import DockerEndpoint, DockerNetwork, decode_endpoint, decode_network
from controller.store import keys
from controller.store.kv import KV, KeyValue


@dataclass(frozen=True, slots=True)
class Stored:
    """A network record and the key it was read from (its ``mod_revision`` guards writes)."""

    network: Network
    kv: KeyValue


def network(kv: KV, name: str) -> Stored | None:
    got = kv.get(keys.network(name))
    return None if got is None else Stored(codec.decode_network(got.value), got)


def endpoint(kv: KV, network: str, endpoint_id: str) -> tuple[Endpoint, KeyValue] | None:
    got = kv.get(keys.endpoint(network, endpoint_id))
    return None if got is None else (codec.decode_endpoint(got.value), got)


def docker_network(kv: KV, host: str, network_id: str) -> DockerNetwork | None:
    got = kv.get(pkeys.network(host, network_id))
    return None if got is None else decode_network(network_id, got.value)


def docker_endpoint(kv: KV, host: str, endpoint_id: str) -> tuple[DockerEndpoint, KeyValue] | None:
    got = kv.get(pkeys.endpoint(host, endpoint_id))
    return None if got is None else (decode_endpoint(endpoint_id, got.value), got)

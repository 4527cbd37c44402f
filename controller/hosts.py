"""Read-only view of the hosts: persistent record, liveness and the agent's last status."""

from __future__ import annotations

from dataclasses import dataclass

from controller.model import codec
from controller.model.errors import InvalidRecord
from controller.model.records import Host, HostStatus
from controller.store import keys
from controller.store.kv import KV


@dataclass(frozen=True, slots=True)
class HostInfo:
    host: Host
    alive: bool
    status: HostStatus | None


def list_hosts(kv: KV) -> list[HostInfo]:
    """Every host with a valid record, sorted by name. Reads three prefixes; raises only
    ``StoreUnavailable``. A host is alive only if its alive key holds a valid record; a status
    record that does not decode counts as no status."""
    alive = set()
    for item in kv.list(keys.ALIVE).items:
        try:
            codec.decode_alive(item.value)
        except InvalidRecord:
            continue
        alive.add(item.key[len(keys.ALIVE) :])
    statuses: dict[str, HostStatus] = {}
    for item in kv.list(keys.STATUS).items:
        try:
            st = codec.decode_status(item.value)
        except InvalidRecord:
            continue
        statuses[item.key[len(keys.STATUS) :]] = st
    out = []
    for item in kv.list(keys.HOSTS).items:
        try:
            host = codec.decode_host(item.value)
        except InvalidRecord:
            continue
        out.append(HostInfo(host, host.name in alive, statuses.get(host.name)))
    return out

"""Key layout of the public schema, version 1. Pure.

Every key heddle reads or writes is built and parsed here, so the layout is stated once.
"""

from __future__ import annotations

ROOT = "/heddle/v1/"
NETWORKS = ROOT + "networks/"
VNIS = ROOT + "vnis/"
HOSTS = ROOT + "hosts/"
ALIVE = ROOT + "alive/"
ENDPOINTS = ROOT + "endpoints/"
IPAM = ROOT + "ipam/"
STATUS = ROOT + "status/"
PLACEMENT = ROOT + "placement/"
LAYOUT = ROOT + "layout"


def network(name: str) -> str:
    return f"{NETWORKS}{name}"


def vni(vni: int) -> str:
    return f"{VNIS}{vni}"


def host(name: str) -> str:
    return f"{HOSTS}{name}"


def alive(name: str) -> str:
    return f"{ALIVE}{name}"


def status(name: str) -> str:
    return f"{STATUS}{name}"


def endpoints_of(network: str) -> str:
    """Prefix of all endpoints of ``network`` (trailing slash: no prefix collisions)."""
    return f"{ENDPOINTS}{network}/"


def endpoint(network: str, endpoint_id: str) -> str:
    return f"{ENDPOINTS}{network}/{endpoint_id}"


def ipam_of(network: str) -> str:
    return f"{IPAM}{network}/"


def ipam(network: str, ip: str) -> str:
    return f"{IPAM}{network}/{ip}"


def placement_of(host: str) -> str:
    """Prefix of ``host``'s placement index: one key per endpoint on that host, so its agent
    learns which networks it takes part in without reading anyone else's endpoints."""
    return f"{PLACEMENT}{host}/"


def placement(host: str, network: str, endpoint_id: str) -> str:
    """The placement key of endpoint ``network/endpoint_id`` on ``host`` (empty value).

    Written and deleted in the same transaction as the endpoint record
    (``controller/store/endpoint_ops.py``)."""
    return f"{PLACEMENT}{host}/{network}/{endpoint_id}"


def kind_of(key: str) -> str | None:
    """Which collection a key belongs to (``"networks"``, ``"endpoints"``, ...), or None."""
    if not key.startswith(ROOT):
        return None
    rest = key[len(ROOT) :]
    kind, sep, _ = rest.partition("/")
    return kind if sep else None


def split_tail(key: str, prefix: str) -> list[str]:
    """The path components of ``key`` after ``prefix``."""
    return key[len(prefix) :].split("/")

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

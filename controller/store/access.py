"""Who may write what in etcd: the roles of heddle's per-host identities. Pure.

etcd checks permissions per key range on every request once authentication is on. With TLS
client certificates the certificate's CN is the etcd user, so every host gets its own
certificate (CN = the host name) and its own role, and an operator identity gets a role of its
own. This module states those roles once; ``controller/store/etcd_access.py`` applies them to a
real etcd, the Ansible role and ``heddle lab up --secure`` both call that through
``heddle access apply``. The README's schema section lists the same table for hand-written
clients.

A host identity reads everything under ``/heddle/v1/`` (its agent needs the whole desired
state) and writes:

* its own ``hosts/<host>``, ``alive/<host>`` and ``status/<host>`` keys, everything under
  its own ``docker/<host>/`` (the plugin's ID mappings) and its own ``placement/<host>/`` (the
  index of the endpoints its plugin creates, on this host only): nobody else's;
* ``endpoints/`` and ``ipam/`` of every network, because the host's Docker plugin creates
  endpoints and reserves addresses in any network a container on that host joins. etcd ranges
  are prefixes and these keys do not name the host, so this cannot be narrowed per host
  without a schema change. What still holds: a host cannot touch networks, VNIs, or any other
  host's records; the read-side rules (first writer of an address, MAC or VNI wins; a record
  that breaks a rule is skipped and reported) bound what a stolen host certificate can do to
  the endpoints of a network.

The operator identity reads and writes everything under ``/heddle/``. ``root`` (etcd's own
administrator, needed to change users and roles) is kept for ``heddle access apply``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from controller.plugin.keys import of_host as docker_of_host
from controller.store import keys

ROOT_USER = "root"
OPERATOR_USER = "heddle-operator"
OPERATOR_ROLE = "heddle-operator"
ROLE_PREFIX = "heddle-"  # every role heddle manages starts so (others are left alone)

_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def prefix_end(prefix: str) -> str:
    """The etcd ``range_end`` that makes ``[prefix, end)`` cover every key starting with
    ``prefix`` (its last byte incremented). Raises ``ValueError`` for an empty prefix."""
    raw = prefix.encode()
    if not raw:
        raise ValueError("an empty prefix has no range end")
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            return (raw[:i] + bytes([raw[i] + 1])).decode("latin-1")
    raise ValueError(f"prefix {prefix!r} has no range end")


@dataclass(frozen=True, slots=True, order=True)
class Grant:
    """``perm`` (``read``, ``write`` or ``readwrite``) on ``key`` alone (``range_end`` empty)
    or on ``[key, range_end)``."""

    key: str
    range_end: str
    perm: str

    @classmethod
    def on_key(cls, key: str, perm: str) -> Grant:
        return cls(key, "", perm)

    @classmethod
    def on_prefix(cls, prefix: str, perm: str) -> Grant:
        return cls(prefix, prefix_end(prefix), perm)

    def __str__(self) -> str:
        what = f"{self.key}*" if self.range_end else self.key
        return f"{self.perm} {what}"


@dataclass(frozen=True, slots=True)
class AccessPlan:
    """The desired roles (name -> grants) and users (name -> roles) heddle manages."""

    roles: dict[str, frozenset[Grant]]
    users: dict[str, frozenset[str]]


def host_role(host: str) -> str:
    return f"{ROLE_PREFIX}host-{host}"


def host_grants(host: str) -> frozenset[Grant]:
    """What the identity of ``host`` may do (see the module docstring). Raises ``ValueError``
    for a host name that is not a valid heddle host name."""
    if not _HOST_NAME.match(host):
        raise ValueError(f"invalid host name {host!r}")
    return frozenset(
        {
            Grant.on_prefix(keys.ROOT, "read"),
            Grant.on_key(keys.host(host), "readwrite"),
            Grant.on_key(keys.alive(host), "readwrite"),
            Grant.on_key(keys.status(host), "readwrite"),
            Grant.on_prefix(docker_of_host(host), "readwrite"),
            Grant.on_prefix(keys.placement_of(host), "readwrite"),
            Grant.on_prefix(keys.ENDPOINTS, "readwrite"),
            Grant.on_prefix(keys.IPAM, "readwrite"),
        }
    )


def operator_grants() -> frozenset[Grant]:
    return frozenset({Grant.on_prefix("/heddle/", "readwrite")})


def plan_access(hosts: Iterable[str], operator: str = OPERATOR_USER) -> AccessPlan:
    """Roles and users for ``hosts`` and the operator identity ``operator``. Pure.

    Raises ``ValueError`` for an invalid host name, or a host called like the operator or
    ``root`` (one certificate CN would then be two identities)."""
    names = sorted(set(hosts))
    for name in names:
        if name in (operator, ROOT_USER):
            raise ValueError(f"host {name!r} would share its identity with {name!r}")
    roles = {host_role(h): host_grants(h) for h in names}
    roles[OPERATOR_ROLE] = operator_grants()
    users = {h: frozenset({host_role(h)}) for h in names}
    users[operator] = frozenset({OPERATOR_ROLE})
    return AccessPlan(roles, users)

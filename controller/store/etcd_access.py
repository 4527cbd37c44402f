"""Apply an ``AccessPlan`` (``controller/store/access.py``) to a real etcd and turn
authentication on: the one path the CLI's ``heddle access apply``, the Ansible role and
``heddle lab up --secure`` share.

Idempotent: users, roles and grants that exist are kept, missing ones are added, grants a
heddle role has but the plan does not are revoked, and roles of users heddle manages that are
not heddle's are left alone. Nothing is ever deleted (a host missing from one run, for example
an Ansible ``--limit``, keeps its identity). Needs an identity that may manage users: anyone
before authentication is on, ``root`` after (a certificate with CN ``root``).

Users get a random password that is thrown away (etcd 3.4 cannot create a user without one):
with ``--client-cert-auth`` the certificate's CN is the identity, so nobody can log in with a
password unless a caller asks for one (``passwords``; the lab uses it for ``root``, because
etcd's JSON gateway authenticates a request by its token, not by the client's certificate).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from pyetcd import etcdrpc
from pyetcd.etcdrpc import auth_pb2

from controller.store.access import ROLE_PREFIX, ROOT_USER, AccessPlan, Grant
from controller.store.etcd import EtcdKV

_PERM = {
    "read": auth_pb2.Permission.READ,
    "write": auth_pb2.Permission.WRITE,
    "readwrite": auth_pb2.Permission.READWRITE,
}
_PERM_NAME = {v: k for k, v in _PERM.items()}


def _grant_of(perm: auth_pb2.Permission) -> Grant:
    return Grant(
        perm.key.decode("latin-1"), perm.range_end.decode("latin-1"), _PERM_NAME[perm.permType]
    )


class _Auth:
    def __init__(self, kv: EtcdKV) -> None:
        self._kv = kv

    def call(self, method: str, request: object, what: str) -> object:
        return self._kv.call_auth(what, method, request)

    def users(self) -> set[str]:
        resp = self.call("UserList", etcdrpc.AuthUserListRequest(), "list users")
        return set(resp.users)  # type: ignore[attr-defined]

    def roles(self) -> set[str]:
        resp = self.call("RoleList", etcdrpc.AuthRoleListRequest(), "list roles")
        return set(resp.roles)  # type: ignore[attr-defined]

    def user_roles(self, user: str) -> set[str]:
        resp = self.call("UserGet", etcdrpc.AuthUserGetRequest(name=user), f"get user {user}")
        return set(resp.roles)  # type: ignore[attr-defined]

    def role_grants(self, role: str) -> set[Grant]:
        resp = self.call("RoleGet", etcdrpc.AuthRoleGetRequest(role=role), f"get role {role}")
        return {_grant_of(p) for p in resp.perm}  # type: ignore[attr-defined]


def apply_access(
    kv: EtcdKV, plan: AccessPlan, passwords: Mapping[str, str] | None = None
) -> list[str]:
    """Bring etcd's users and roles to ``plan``, make sure ``root`` exists, and enable
    authentication. Returns what changed, one line each (``[]``: nothing did).

    ``passwords``: users (by name) that get this password instead of a random one, when they
    are created. Raises ``StoreRefused`` when this identity may not manage users (retrying does
    not help), ``StoreUnavailable`` when etcd cannot be reached (retrying can)."""
    auth = _Auth(kv)
    pw = dict(passwords or {})
    changes: list[str] = []
    users, roles = auth.users(), auth.roles()
    want_users = {ROOT_USER: frozenset({"root"}), **plan.users}
    for role, grants in sorted(plan.roles.items()):
        if role not in roles:
            auth.call("RoleAdd", etcdrpc.AuthRoleAddRequest(name=role), f"add role {role}")
            changes.append(f"role {role} added")
            have: set[Grant] = set()
        else:
            have = auth.role_grants(role)
        for g in sorted(grants - have):
            perm = auth_pb2.Permission(
                permType=_PERM[g.perm], key=g.key.encode(), range_end=g.range_end.encode()
            )
            req = etcdrpc.AuthRoleGrantPermissionRequest(name=role, perm=perm)
            auth.call("RoleGrantPermission", req, f"grant {g} to {role}")
            changes.append(f"role {role}: {g}")
        for g in sorted(have - grants) if role.startswith(ROLE_PREFIX) else ():
            req = etcdrpc.AuthRoleRevokePermissionRequest(
                role=role, key=g.key, range_end=g.range_end
            )
            auth.call("RoleRevokePermission", req, f"revoke {g} from {role}")
            changes.append(f"role {role}: revoked {g}")
    for user, want in sorted(want_users.items()):
        if user not in users:
            password = pw.get(user) or secrets.token_urlsafe(32)
            req = etcdrpc.AuthUserAddRequest(name=user, password=password)
            auth.call("UserAdd", req, f"add user {user}")
            changes.append(f"user {user} added")
            have_roles: set[str] = set()
        else:
            have_roles = auth.user_roles(user)
        for role in sorted(want - have_roles):
            req = etcdrpc.AuthUserGrantRoleRequest(user=user, role=role)
            auth.call("UserGrantRole", req, f"grant role {role} to {user}")
            changes.append(f"user {user}: role {role}")
        for role in sorted(r for r in have_roles - want if r.startswith(ROLE_PREFIX)):
            req = etcdrpc.AuthUserRevokeRoleRequest(name=user, role=role)
            auth.call("UserRevokeRole", req, f"revoke role {role} from {user}")
            changes.append(f"user {user}: revoked role {role}")
    # Idempotent on etcd's side: enabling an enabled store is accepted and ignored.
    auth.call("AuthEnable", etcdrpc.AuthEnableRequest(), "enable authentication")
    return changes

"""``heddle access show|apply``: the per-host etcd identities (``controller/store/access.py``).

``show`` is pure (prints the plan); ``apply`` writes it through
``controller/store/etcd_access.py`` with the identity given by ``--cert`` (etcd's ``root`` once
authentication is on) and prints what changed, so a rollout can tell a change from a no-op.
"""

from __future__ import annotations

import argparse
import json

from controller.cli.parser import OK, REFUSED
from controller.model.errors import InvalidRecord
from controller.store.access import AccessPlan, plan_access
from controller.store.kv import KV


def _plan(args: argparse.Namespace) -> AccessPlan:
    if not args.hosts:
        raise InvalidRecord("name at least one host (--host NAME)")
    try:
        return plan_access(args.hosts, args.operator)
    except ValueError as exc:
        raise InvalidRecord(str(exc)) from None


def show(args: argparse.Namespace) -> int:
    """Print the plan; never touches etcd. Exit ``REFUSED`` for a bad host name."""
    plan = _plan(args)
    if args.output == "json":
        print(
            json.dumps(
                {
                    "roles": {r: sorted(map(str, g)) for r, g in sorted(plan.roles.items())},
                    "users": {u: sorted(r) for u, r in sorted(plan.users.items())},
                },
                indent=2,
            )
        )
        return OK
    for role, grants in sorted(plan.roles.items()):
        print(f"role {role}")
        for g in sorted(grants):
            print(f"  {g}")
    for user, roles in sorted(plan.users.items()):
        print(f"user {user}: {', '.join(sorted(roles))}")
    return OK


def apply(args: argparse.Namespace, kv: KV) -> int:
    """Apply the plan; prints each change, or ``unchanged``. Needs a real etcd."""
    from controller.store.etcd import EtcdKV
    from controller.store.etcd_access import apply_access

    plan = _plan(args)
    if not isinstance(kv, EtcdKV):
        print("heddle: error: access apply needs a real etcd", flush=True)
        return REFUSED
    changes = apply_access(kv, plan)
    if args.output == "json":
        print(json.dumps({"changed": bool(changes), "changes": changes}))
    else:
        print("\n".join(changes) if changes else "unchanged")
    return OK

"""The record verbs: ``network``, ``endpoint`` and ``host``. Each reads or writes etcd through
``controller.desired`` / ``controller.hosts`` and prints a table or JSON; refusals raise
``HeddleError`` (the caller turns them into exit codes, see ``controller.cli.parser``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from controller.model.errors import InvalidRecord
from controller.model.records import Network
from controller.output import as_json, table
from controller.store.kv import KV


def emit(args: argparse.Namespace, obj: Any, headers: Sequence[str], rows: list[list[Any]]) -> None:
    """Print ``obj`` as JSON (``-o json``) or ``rows`` as a table."""
    print(as_json(obj) if args.output == "json" else table(headers, rows))


def _network_row(n: Network) -> list[object]:
    gateways = ",".join(g for g in (n.gateway, n.gateway6) if g is not None) or None
    return [n.name, n.vni, n.subnets, gateways, n.mtu, n.egress]


def by_family(values: Sequence[str] | None, what: str) -> tuple[str | None, str | None]:
    """Split repeated ``--subnet``/``--gateway``/``--ip`` values into (IPv4, IPv6): at most one
    of each (an IPv6 value holds a ':'). Raises ``InvalidRecord``."""
    four = [v for v in values or () if ":" not in v]
    six = [v for v in values or () if ":" in v]
    if len(four) > 1 or len(six) > 1:
        raise InvalidRecord(f"--{what}: give at most one IPv4 and one IPv6 value")
    return (four[0] if four else None), (six[0] if six else None)


def network(args: argparse.Namespace, kv: KV) -> int:
    from controller.desired import DesiredState

    ds = DesiredState(kv)
    heads = ["name", "vni", "subnet", "gateway", "mtu", "egress"]
    if args.action == "create":
        subnet, subnet6 = by_family(args.subnet, "subnet")
        gateway, gateway6 = by_family(args.gateway, "gateway")
        n = ds.create_network(
            args.name, subnet, args.vni, gateway, args.mtu, args.egress, subnet6, gateway6
        )
        emit(args, asdict(n), heads, [_network_row(n)])
    elif args.action == "ls":
        nets = ds.networks()
        emit(
            args,
            [asdict(n) for n in nets],
            heads,
            [_network_row(n) for n in nets],
        )
    elif args.action == "show":
        n = ds.get_network(args.name)
        eps = ds.endpoints(args.name)
        if args.output == "json":
            print(as_json({**asdict(n), "endpoints": [asdict(e) for e in eps]}))
        else:
            print(table(heads, [_network_row(n)]))
            print()
            print(_endpoint_table(eps))
    elif args.action == "rm":
        removed = ds.remove_network(args.name, force=args.force)
        if args.output == "json":
            print(as_json({"removed": args.name, "endpoints_removed": removed}))
        else:
            print(
                f"removed network {args.name}" + (f" and {removed} endpoint(s)" if removed else "")
            )
    return 0


def _endpoint_table(eps: Sequence[Any]) -> str:
    return table(
        ["network", "id", "host", "ip", "mac", "netns", "ifname"],
        [[e.network, e.id, e.host, ",".join(e.addresses), e.mac, e.netns, e.ifname] for e in eps],
    )


def endpoint(args: argparse.Namespace, kv: KV) -> int:
    from controller.desired import DesiredState

    ds = DesiredState(kv)
    if args.action == "create":
        ip, ip6 = by_family(args.ip, "ip")
        e = ds.create_endpoint(
            args.network, args.host, args.netns, ip, args.ifname, args.endpoint_id, ip6=ip6
        )
        print(as_json(asdict(e)) if args.output == "json" else _endpoint_table([e]))
    elif args.action == "ls":
        eps = ds.endpoints(args.network)
        print(as_json([asdict(e) for e in eps]) if args.output == "json" else _endpoint_table(eps))
    elif args.action == "show":
        e = ds.get_endpoint(args.network, args.id)
        print(as_json(asdict(e)) if args.output == "json" else _endpoint_table([e]))
    elif args.action == "rm":
        e = ds.remove_endpoint(args.network, args.id)
        if args.output == "json":
            print(as_json({"removed": asdict(e)}))
        else:
            print(f"removed endpoint {e.network}/{e.id} and released {', '.join(e.addresses)}")
    return 0


def host(args: argparse.Namespace, kv: KV) -> int:
    from controller.hosts import list_hosts

    infos = list_hosts(kv)
    if args.output == "json":
        print(
            as_json(
                [
                    {
                        **asdict(i.host),
                        "alive": i.alive,
                        "status": asdict(i.status) if i.status else None,
                    }
                    for i in infos
                ]
            )
        )
        return 0
    rows = []
    for i in infos:
        st = i.status
        state = (
            "-"
            if st is None
            else "ok"
            if st.ok
            else "; ".join(
                ([f"stuck: {st.stuck}"] if st.stuck else []) + [f"error: {e}" for e in st.errors]
            )
            or "not ok"
        )
        rows.append(
            [
                i.host.name,
                i.host.vtep,
                i.host.backend,
                "yes" if i.alive else "no",
                st.revision if st else None,
                state,
                st.skipped_count if st else None,
            ]
        )
    print(table(["name", "vtep", "backend", "alive", "revision", "status", "skipped"], rows))
    return 0

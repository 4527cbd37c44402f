"""``heddle status``: the cluster at a glance (``controller.diag.cluster``); exit 0 when
healthy, 1 when not. One listing of ``/heddle/v1/`` gives a consistent picture."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from controller.cli.parser import OK, REFUSED
from controller.diag.cluster import ClusterReport, HostHealth, cluster_report
from controller.model import codec
from controller.model.errors import InvalidRecord
from controller.model.records import HostStatus
from controller.model.view import Snapshot
from controller.output import as_json, table
from controller.store import keys
from controller.store.cache import Cache
from controller.store.interest import newest_followed
from controller.store.kv import KV


def read_cluster(kv: KV) -> tuple[Snapshot, dict[str, HostStatus], dict[str, int]]:
    """The desired state, the hosts' status records and, per host, the revision of the newest
    record its agent follows (``controller/store/interest.py``), all at one revision. Raises
    only ``StoreUnavailable``; undecodable status records count as absent.

    Why the third value: agents' status writes move etcd's revision too, and an agent hears
    only of the networks it takes part in, so its lag is measured against the newest change
    it has to realise, not against etcd's."""
    listing = kv.list(keys.ROOT)
    cache = Cache()
    cache.replace_all(listing)
    statuses = {}
    pairs = [(item.key, item.mod_revision) for item in listing.items]
    snap = cache.snapshot()
    desired = {h: newest_followed(pairs, h) for h in snap.hosts}
    for item in listing.items:
        if item.key.startswith(keys.STATUS):
            try:
                statuses[item.key[len(keys.STATUS) :]] = codec.decode_status(item.value)
            except InvalidRecord:
                continue
    return snap, statuses, desired


def status(args: argparse.Namespace, kv: KV) -> int:
    snap, statuses, desired = read_cluster(kv)
    report = cluster_report(snap, statuses, time.time(), args.stale_after, desired)
    if args.output == "json":
        print(as_json({**asdict(report), "healthy": report.healthy}))
    else:
        print(render(report))
    return OK if report.healthy else REFUSED


def _age(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds:.0f}s"


def _errors(h: HostHealth) -> str | None:
    if h.stuck:
        return f"stuck: {h.stuck}"
    return "; ".join(h.errors) or None


def render(report: ClusterReport) -> str:
    """The report as tables for people."""
    hosts = table(
        ["host", "vtep", "backend", "alive", "last pass", "age", "revision", "lag", "errors"],
        [
            [
                h.name, h.vtep, h.backend, "yes" if h.alive else "NO",
                None if h.ok is None else "ok" if h.ok else "FAILED", _age(h.last_pass_age),
                h.revision, h.revision_lag, _errors(h),
            ]
            for h in report.hosts
        ],
    )  # fmt: skip
    nets = table(
        ["network", "vni", "subnet", "mtu", "endpoints"],
        [
            [n.name, n.vni, n.subnet, n.mtu or "auto",
             ", ".join(f"{h}:{c}" for h, c in n.endpoints.items()) or "none"]
            for n in report.networks
        ],
    )  # fmt: skip
    out = [f"etcd revision {report.revision}", "", hosts, "", nets]
    if report.skipped:
        out += ["", f"skipped records ({len(report.skipped)}):"]
        out += [f"  {s}" for s in report.skipped[:20]]
        if len(report.skipped) > 20:
            out.append(f"  ... and {len(report.skipped) - 20} more (-o json lists all)")
    notices = [f"  host {h.name}: {n}" for h in report.hosts for n in h.notices]
    if notices:
        out += ["", "notices (repaired, but someone else changed them):", *notices]
    out.append("")
    if report.healthy:
        out.append("healthy")
    else:
        out.append(f"NOT healthy ({len(report.problems)} problem(s)):")
        out += [f"  {p}" for p in report.problems]
    return "\n".join(out)

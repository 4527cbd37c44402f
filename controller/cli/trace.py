"""``heddle trace NETWORK FROM TO``: asks the two hosts' agents (in parallel) what their data
planes hold and prints the path hop by hop (``controller.diag.trace``); exit 0 when the path
is whole, 1 naming the first hop that is not."""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from controller.cli.parser import OK, REFUSED
from controller.cli.status import read_cluster
from controller.diag.client import AgentUnreachable, fetch_facts
from controller.diag.facts import NetworkFacts
from controller.diag.trace import TraceReport, resolve_endpoints, trace_path
from controller.model.records import HostStatus
from controller.output import as_json, table
from controller.store.kv import KV


def _ask(st: HostStatus | None, host: str, network: str, timeout: float) -> NetworkFacts | str:
    if st is None or st.metrics is None:
        return f"the agent of {host} publishes no metrics address (run it with --metrics)"
    try:
        return fetch_facts(st.metrics, network, timeout)
    except AgentUnreachable as exc:
        return str(exc)


def trace(args: argparse.Namespace, kv: KV) -> int:
    snap, statuses, _ = read_cluster(kv)
    src, dst = resolve_endpoints(snap, args.network, args.source, args.dest)
    hosts = sorted({src.host, dst.host})
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        futures = {
            h: pool.submit(_ask, statuses.get(h), h, args.network, args.timeout) for h in hosts
        }
        facts = {h: f.result() for h, f in futures.items()}
    six = ":" in args.dest
    report = trace_path(snap, src, dst, facts[src.host], facts[dst.host], six)
    if args.output == "json":
        bad = report.first_bad
        print(as_json({**asdict(report), "whole": report.whole,
                       "first_bad": bad.name if bad else None}))  # fmt: skip
    else:
        print(render(report))
    return OK if report.whole else REFUSED


def render(report: TraceReport) -> str:
    s, d = report.source, report.dest
    head = (f"{report.network}: {s.id} ({', '.join(s.addresses)} on {s.host}) -> {d.id} "
            f"({', '.join(d.addresses)} on {d.host})")  # fmt: skip
    body = table(
        ["#", "hop", "host", "status", "evidence"],
        [[i, h.name, h.host, h.status.upper() if h.status != "ok" else "ok", h.evidence]
         for i, h in enumerate(report.hops, 1)],
    )  # fmt: skip
    bad = report.first_bad
    tail = "path is whole" if bad is None else f"first bad hop: {bad.name} on {bad.host}"
    return f"{head}\n{body}\n{tail}"

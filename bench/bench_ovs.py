"""Benchmark of the ovs data plane at 5,000 remote endpoints over 50 remote VTEPs (root).

One throw-away host netns (``hdo-b<random>-h``) runs a private ``ovsdb-server`` +
``ovs-vswitchd`` (``netdev`` datapath, from ``controller.lab.ovs``), with an underlay veth to a
peer netns and one local endpoint netns. Everything is removed afterwards, even on error.

Measures:

* first pass: observe + plan + apply from nothing, each op timed on its own; the
  ``ReplaceFlows`` of the integration bridge is "install the full table" (~10,000 flows);
* no-op pass: observe (one OVSDB read, two cookie-filtered ``dump-flows``) + plan;
* incremental pass: one remote endpoint added and one removed -> one ``ModFlows`` bundle;
  and the same change made the other way, by ``--bundle replace-flows`` of the whole new table;
* restart: ovs-vswitchd killed and started again, then one pass (restore inside
  flow-restore-wait) - what the agent does after its watch fires;
* baseline, same run, same instance: ``ovs-ofctl add-flows`` of the same table from a file onto
  an empty bridge (the raw tool floor), and the same with ``--bundle``.

Repeated measurements report the median of ``--repeat`` runs. Prints a table and writes JSON to
``bench/results/ovs-<UTC timestamp>.json``.
Run: ``.venv/bin/python bench/bench_ovs.py [--remotes 5000] [--vteps 50] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from pyroute2 import IPRoute, netns
from scale_view import NET, build_snapshot, local_host, timed

from controller.dataplane.ovs import OvsDataPlane
from controller.lab import ovs as lab_ovs
from controller.model.flow import Flow
from controller.model.view import HostView, Snapshot, host_view
from controller.plan.ovs import desired_flows

RESULTS = Path(__file__).resolve().parent / "results"
LOCAL = local_host("ovs")
RAW_BRIDGE = "br-raw"


def changed(snap: Snapshot) -> Snapshot:
    """``snap`` with one remote endpoint removed and another added."""
    eps = dict(snap.endpoints)
    gone = eps.pop((NET.name, "e0"))
    new = replace(gone, id="enew", ip="10.200.255.1", mac="02:be:0a:c8:ff:01")
    eps[NET.name, new.id] = new
    return replace(snap, endpoints=eps, revision=snap.revision + 1)


@dataclass(frozen=True)
class Pass:
    """One pass: op count, phase times, and with ``per_op`` each op's own apply time."""

    ops: int
    observe_s: float
    plan_s: float
    apply_s: float
    op_times: tuple[tuple[str, float], ...] = ()

    @property
    def total_s(self) -> float:
        return self.observe_s + self.plan_s + self.apply_s

    def op_time(self, prefix: str) -> float:
        return sum(t for name, t in self.op_times if name.startswith(prefix))


def one_pass(dp: OvsDataPlane, view: HostView, per_op: bool = False) -> Pass:
    state, t_obs = timed(lambda: dp.observe(view))
    ops, t_plan = timed(lambda: dp.plan(view, state))
    op_times: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    if per_op:
        for op in ops:
            t1 = time.perf_counter()
            dp.apply([op])
            op_times.append((str(op), time.perf_counter() - t1))
    else:
        dp.apply(ops)
    return Pass(len(ops), t_obs, t_plan, time.perf_counter() - t0, tuple(op_times))


def median(xs: list[float]) -> float:
    return statistics.median(xs)


@dataclass(frozen=True)
class OvsHost:
    """A throw-away host namespace running a private OVS, its underlay peer, one endpoint
    namespace and ``extra`` more (``private_ovs``)."""

    host: str
    peer: str
    ep: str
    inst: lab_ovs.OvsInstance
    extra: tuple[str, ...]


@contextlib.contextmanager
def private_ovs(tag: str, extra: int = 0) -> Iterator[OvsHost]:
    """Namespaces ``hdo-<tag><random>-{h,u,e,l0..}``: the host (``ul0`` to the peer's ``ulp``,
    the VTEP address) with ``ovsdb-server`` + ``ovs-vswitchd`` inside, in a private directory.
    Everything is stopped and removed afterwards, even on error."""
    prefix = f"hdo-{tag}{uuid.uuid4().hex[:5]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
    inst: lab_ovs.OvsInstance | None = None
    created: list[str] = []
    try:
        host, peer, ep = f"{prefix}-h", f"{prefix}-u", f"{prefix}-e"
        more = [f"{prefix}-l{k}" for k in range(extra)]
        for name in (host, peer, ep, *more):
            netns.create(name)
            created.append(name)
        with IPRoute(netns=host, flags=0) as ipr:
            ipr.link("add", ifname="ul0", kind="veth", peer={"ifname": "ulp", "net_ns_fd": peer})
            idx = ipr.link_lookup(ifname="ul0")[0]
            ipr.addr("add", index=idx, address=LOCAL.vtep, prefixlen=16)
            ipr.link("set", index=idx, state="up")
        inst = lab_ovs.start(host, workdir / "ovs")
        yield OvsHost(host, peer, ep, inst, tuple(more))
    finally:
        if inst is not None:
            inst.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        for name in created:
            netns.remove(name)


@dataclass(frozen=True)
class Result:
    flows: int
    first: Pass
    noop: list[Pass]
    incremental: list[Pass]
    incremental_as_replace_s: list[float]
    restart: list[tuple[float, Pass]]  # (ovs-vswitchd start time, the pass after it)
    add_flows_s: list[float]
    bundle_add_flows_s: list[float]


def run(args: argparse.Namespace) -> Result:
    with private_ovs("b") as oh:
        host, ep, inst = oh.host, oh.ep, oh.inst
        snap = build_snapshot(args.remotes, args.vteps, ep, "ovs")
        view = host_view(snap, LOCAL)
        view2 = host_view(changed(snap), LOCAL)
        with OvsDataPlane(
            LOCAL.vtep, ovsdb=inst.db_url, datapath="netdev", underlay_dev="ul0", netns=host
        ) as dp:
            bridge = dp.layout.bridge
            first = one_pass(dp, view, per_op=True)
            state = dp.observe(view)
            table = desired_flows(dp.layout, view, state)[bridge]
            table2 = desired_flows(dp.layout, view2, state)[bridge]
            noop = [one_pass(dp, view) for _ in range(args.repeat)]
            assert all(r.ops == 0 for r in noop), "no-op pass planned ops"
            incremental: list[Pass] = []
            for i in range(2 * args.repeat):
                r = one_pass(dp, view2 if i % 2 == 0 else view, per_op=True)
                kinds = [name.split(":")[0] for name, _ in r.op_times]
                assert kinds == [f"flows modify {bridge}"], kinds
                incremental.append(r)
            as_replace: list[float] = []  # the same change as a whole-table replace
            for i in range(2 * args.repeat):
                nxt = table2 if i % 2 == 0 else table
                t1 = time.perf_counter()
                dp.openflow.replace(bridge, nxt)
                as_replace.append(time.perf_counter() - t1)
            assert one_pass(dp, view).ops == 0, "back at the table of ``view``"
            restart: list[tuple[float, Pass]] = []
            for _ in range(args.repeat):
                inst.kill_vswitchd(signal.SIGKILL)
                _, t_start = timed(inst.start_vswitchd)
                restart.append((t_start, one_pass(dp, view)))
                assert one_pass(dp, view).ops == 0
        add, bundle = baseline(inst, table, args.repeat)
        return Result(len(table), first, noop, incremental, as_replace, restart, add, bundle)


def baseline(
    inst: lab_ovs.OvsInstance, table: tuple[Flow, ...], repeat: int
) -> tuple[list[float], list[float]]:
    """``ovs-ofctl add-flows`` and ``--bundle add-flows`` of ``table`` from a file onto an
    empty bridge of the same instance: the raw tool floor."""
    inst.vsctl("add-br", RAW_BRIDGE, "--", "set", "bridge", RAW_BRIDGE, "datapath_type=netdev",
               "fail_mode=secure")  # fmt: skip
    plain: list[float] = []
    bundle: list[float] = []
    with tempfile.NamedTemporaryFile("w", suffix=".flows", delete=False) as f:
        f.write("".join(fl.text() + "\n" for fl in table))
        path = f.name
    try:
        for _ in range(repeat):
            for out, extra in ((plain, []), (bundle, ["--bundle"])):
                inst.ofctl("del-flows", RAW_BRIDGE)
                t1 = time.perf_counter()
                inst.ofctl("-O", "OpenFlow14", *extra, "add-flows", RAW_BRIDGE, path)
                out.append(time.perf_counter() - t1)
        count = inst.ofctl("-O", "OpenFlow14", "dump-aggregate", RAW_BRIDGE)
        assert f"flow_count={len(table)}" in count, count
    finally:
        os.unlink(path)
        inst.vsctl("del-br", RAW_BRIDGE)
    return plain, bundle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--remotes", type=int, default=5000)
    ap.add_argument("--vteps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_ovs needs root (namespaces, OVS daemons)", file=sys.stderr)
        return 2
    if shutil.which("ovs-vswitchd") is None:
        print("bench_ovs needs Open vSwitch (apt-get install openvswitch-switch)", file=sys.stderr)
        return 2
    res = run(args)
    bridge = "flows replace br-heddle"
    summary = {
        "first_pass_total_s": res.first.total_s,
        "full_table_install_s": res.first.op_time(bridge),
        "noop_pass_median_s": median([r.total_s for r in res.noop]),
        "noop_observe_median_s": median([r.observe_s for r in res.noop]),
        "incremental_pass_median_s": median([r.total_s for r in res.incremental]),
        "incremental_bundle_median_s": median([r.op_time("flows modify") for r in res.incremental]),
        "incremental_as_replace_flows_median_s": median(res.incremental_as_replace_s),
        "vswitchd_start_median_s": median([t for t, _ in res.restart]),
        "restart_pass_median_s": median([r.total_s for _, r in res.restart]),
        "baseline_add_flows_median_s": median(res.add_flows_s),
        "baseline_bundle_add_flows_median_s": median(res.bundle_add_flows_s),
    }
    print(
        f"ovs data plane (netdev): {args.remotes} remote endpoints over {args.vteps} VTEPs, "
        f"{res.flows} flows on the integration bridge; medians of {args.repeat}"
    )
    rows = [
        ("first pass (observe+plan+apply, from nothing)", "first_pass_total_s"),
        ("  of which: full table install (replace-flows bundle)", "full_table_install_s"),
        ("no-op pass (observe+plan)", "noop_pass_median_s"),
        ("  of which: observe", "noop_observe_median_s"),
        ("incremental pass (+1/-1 remote)", "incremental_pass_median_s"),
        ("  of which: the ModFlows bundle", "incremental_bundle_median_s"),
        ("same change as whole-table replace-flows", "incremental_as_replace_flows_median_s"),
        ("ovs-vswitchd start (detached)", "vswitchd_start_median_s"),
        ("pass after ovs-vswitchd restart (restore)", "restart_pass_median_s"),
        ("baseline: ovs-ofctl add-flows from file", "baseline_add_flows_median_s"),
        ("baseline: ovs-ofctl --bundle add-flows", "baseline_bundle_add_flows_median_s"),
    ]
    for label, key in rows:
        print(f"{label:56} {summary[key] * 1000:8.1f}ms")
    ratio = summary["full_table_install_s"] / summary["baseline_add_flows_median_s"]
    print(f"full table install / raw add-flows: {ratio:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"ovs-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "remotes": args.remotes,
                "vteps": args.vteps,
                "repeat": args.repeat,
                "flows": res.flows,
                "summary": summary,
                "first_pass_ops": res.first.op_times,
                "kernel": platform.release(),
                "python": platform.python_version(),
                "loadavg": os.getloadavg(),
            },
            indent=2,
            default=str,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

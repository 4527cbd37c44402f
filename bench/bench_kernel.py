"""Benchmark of the kernel data plane at 5,000 remote endpoints over 50 remote VTEPs (root).

Measures, in one throw-away host netns (``hdt-b<random>-h``, deleted afterwards even on error):

* first pass: observe + plan + apply from nothing (bridge, vxlan, 1 local endpoint,
  5,000 FDB + 5,000 neighbour + 50 flood entries),
* no-op pass: observe + plan on the converged host (must plan nothing),
* incremental pass: one remote endpoint added and one removed,
* baseline: the same FDB + neighbour + flood entries written by a plain pyroute2 loop (one
  request per entry) onto a fresh VXLAN device, so the first pass can be reported as a ratio
  to raw netlink.

Both driver modes are measured (``fast_netlink=True``: hand-packed rtnetlink for the
FDB/neighbour tables; ``False``: pyroute2 for everything), each in its own namespaces.

Prints a table and writes JSON to ``bench/results/kernel-<UTC timestamp>.json``.
Run: ``.venv/bin/python bench/bench_kernel.py [--remotes 5000] [--vteps 50]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

from pyroute2 import IPRoute, netns
from scale_view import NET, build_snapshot, local_host, timed

from controller.dataplane.kernel import KernelDataPlane
from controller.model.view import HostView, host_view
from controller.plan.kernel_ops import ZERO_MAC

RESULTS = Path(__file__).resolve().parent / "results"
LOCAL = local_host("kernel")


def one_pass(dp: KernelDataPlane, view: HostView) -> dict[str, float | int]:
    state, t_obs = timed(lambda: dp.observe(view))
    ops, t_plan = timed(lambda: dp.plan(view, state))
    _, t_apply = timed(lambda: dp.apply(ops))
    return {
        "ops": len(ops),
        "observe_s": t_obs,
        "plan_s": t_plan,
        "apply_s": t_apply,
        "total_s": t_obs + t_plan + t_apply,
    }


def raw_baseline(ns: str, view: HostView) -> dict[str, float | int]:
    """The same entries, one plain pyroute2 request each, on a fresh VXLAN device."""
    nv = view.networks[0]
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link(
            "add",
            ifname="hdtraw",
            kind="vxlan",
            vxlan_id=0xBF,
            vxlan_local=LOCAL.vtep,
            vxlan_port=4789,
            vxlan_learning=0,
            vxlan_proxy=1,
        )
        idx = ipr.link("get", ifname="hdtraw")[0]["index"]

        def write() -> int:
            n = 0
            for r in nv.remote:
                ipr.fdb("replace", ifindex=idx, lladdr=r.mac, dst=r.vtep, state=0xC0, flags=2)
                ipr.neigh("replace", ifindex=idx, dst=r.ip, lladdr=r.mac, state=0x80)
                n += 2
            for vtep in nv.flood:
                ipr.fdb("append", ifindex=idx, lladdr=ZERO_MAC, dst=vtep)
                n += 1
            return n

        n, t = timed(write)
        ipr.link("del", index=idx)
    return {"ops": n, "total_s": t}


def run_mode(args: argparse.Namespace, fast: bool) -> dict[str, dict[str, float | int]]:
    """All driver passes in a fresh pair of namespaces (deleted afterwards)."""
    prefix = f"hdt-b{uuid.uuid4().hex[:6]}"
    host_ns, ep_ns = f"{prefix}-h", f"{prefix}-e"
    created: list[str] = []
    try:
        for name in (host_ns, ep_ns):
            netns.create(name)
            created.append(name)
        snap = build_snapshot(args.remotes, args.vteps, ep_ns, "kernel")
        view = host_view(snap, LOCAL)
        with KernelDataPlane(LOCAL.vtep, netns=host_ns, fast_netlink=fast) as dp:
            first = one_pass(dp, view)
            noop = one_pass(dp, view)
            assert noop["ops"] == 0, f"no-op pass planned {noop['ops']} ops"
            eps = dict(snap.endpoints)
            gone = eps.pop((NET.name, "e0"))
            new = replace(gone, id="enew", ip="10.200.255.1", mac="02:be:0a:c8:ff:01")
            eps[NET.name, new.id] = new
            view2 = host_view(replace(snap, endpoints=eps), LOCAL)
            incr = one_pass(dp, view2)
            after = one_pass(dp, view2)
            assert after["ops"] == 0, f"pass after the change planned {after['ops']} ops"
        out = {"first_pass": first, "noop_pass": noop, "incremental_pass": incr}
        if fast:  # the baseline once, in the same kind of namespace
            out["raw_pyroute2_loop"] = raw_baseline(host_ns, view)
        return out
    finally:
        for name in created:
            netns.remove(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--remotes", type=int, default=5000)
    ap.add_argument("--vteps", type=int, default=50)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_kernel needs root (it creates network namespaces)", file=sys.stderr)
        return 2

    fast = run_mode(args, fast=True)
    slow = run_mode(args, fast=False)
    raw = fast["raw_pyroute2_loop"]
    entries = 2 * args.remotes + args.vteps
    ratio = float(fast["first_pass"]["apply_s"]) / float(raw["total_s"])
    ratio_slow = float(slow["first_pass"]["apply_s"]) / float(raw["total_s"])
    rows = [
        ("first pass (observe+plan+apply)", fast["first_pass"], slow["first_pass"]),
        ("no-op pass (observe+plan)", fast["noop_pass"], slow["noop_pass"]),
        ("incremental (+1/-1 remote)", fast["incremental_pass"], slow["incremental_pass"]),
    ]
    print(f"kernel data plane: {args.remotes} remote endpoints over {args.vteps} VTEPs")
    print(f"{'pass':34} {'mode':9} {'ops':>6} {'observe':>9} {'plan':>9} {'apply':>9} {'total':>9}")

    def cell(r: dict[str, float | int], key: str) -> str:
        return f"{float(r[key]) * 1000:7.1f}ms" if key in r else f"{'-':>9}"

    def line(label: str, mode: str, r: dict[str, float | int]) -> None:
        print(
            f"{label:34} {mode:9} {int(r['ops']):6d} {cell(r, 'observe_s')} "
            f"{cell(r, 'plan_s')} {cell(r, 'apply_s')} {cell(r, 'total_s')}"
        )

    for label, f, sl in rows:
        line(label, "raw-nl", f)
        line("", "pyroute2", sl)
    line("plain pyroute2 loop (entries only)", "baseline", raw)
    print(
        f"first-pass apply / plain pyroute2 loop: {ratio:.2f}x (raw-nl), "
        f"{ratio_slow:.2f}x (pyroute2 mode)  [{entries} FDB+neigh+flood entries]"
    )

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"kernel-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "remotes": args.remotes,
                "vteps": args.vteps,
                "entries": entries,
                "raw_netlink_mode": fast,
                "pyroute2_mode": slow,
                "apply_vs_plain_loop_ratio": {"raw_netlink": ratio, "pyroute2": ratio_slow},
                "kernel": platform.release(),
                "python": platform.python_version(),
                "loadavg": os.getloadavg(),
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What one more local endpoint costs the ovs backend on a host that already has many (root).

One throw-away host netns runs a private ``ovsdb-server`` + ``ovs-vswitchd`` (``netdev``
datapath, from ``controller.lab.ovs``) with an underlay veth to a peer netns, as
``bench_ovs.py``; the network also has ``--remotes`` endpoints on 10 remote VTEPs. Then
``--locals`` endpoints, each in its own namespace and spread round-robin over ``--networks``
networks (the first is the remote endpoints' network), are added one at a time, each by one pass
of the agent's own driver stack (``Incremental(OvsDataPlane, OvsShortcut)``, as
``controller/cli/agent.py`` builds it), so the pass is planned from the remembered state
like the agent's; the pass after it, which reads everything afresh (as the agent's does), is
not timed. Per timed pass: observe + plan (the remembered state and the OVSDB replica read),
apply (the endpoint's veth, port, side and flows, then waiting for ``ovs-vswitchd`` to add
the port), and the size of its ``ModFlows`` bundle in flow mods.

Reported at each checkpoint of ``--at`` (the N-th local endpoint): the median of the passes
from N-4 to N. The baseline is another checkout of heddle run by the same script the same
hour (``PYTHONPATH=<checkout> .venv/bin/python bench/bench_ovs_local.py``); the README row
gives both. Everything is removed afterwards, even on error.

Run: ``.venv/bin/python bench/bench_ovs_local.py [--locals 100] [--at 10,50,100]
[--networks 1]``. Prints a
table and writes JSON to ``bench/results/ovs-local-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import platform
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench_ovs import LOCAL, private_ovs
from scale_view import NET, build_snapshot

from controller.dataplane.incremental import Incremental
from controller.dataplane.ovs import OvsDataPlane
from controller.model.records import Endpoint, Network
from controller.model.view import Snapshot, host_view
from controller.output import table
from controller.plan.ovs_incremental import OvsShortcut
from controller.plan.ovs_ops import ModFlows

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Added:
    """One timed pass that added the ``n``-th local endpoint."""

    n: int
    plan_ms: float  # observe + plan
    apply_ms: float
    flow_mods: int  # adds + deletes in its ModFlows bundle(s)


def extra_networks(count: int) -> dict[str, Network]:
    """``count - 1`` networks beside ``NET``: ``bench1`` (10.201.1.0/24) onwards."""
    return {
        f"bench{j}": Network(f"bench{j}", NET.vni + j, f"10.201.{j}.0/24") for j in range(1, count)
    }


def with_locals(snap: Snapshot, namespaces: list[str], networks: int = 1) -> Snapshot:
    """``snap`` plus one local endpoint per namespace, the k-th in network ``k % networks``
    (``NET``: 10.200.240.0 onwards; the others: ``extra_networks``, .1 onwards)."""
    eps = dict(snap.endpoints)
    first = int(ipaddress.IPv4Address("10.200.240.0"))
    nets = {**snap.networks, **extra_networks(networks)}
    for k, ns in enumerate(namespaces):
        j, i = k % networks, k // networks
        net = NET.name if j == 0 else f"bench{j}"
        ip = str(ipaddress.IPv4Address(first + k)) if j == 0 else f"10.201.{j}.{i + 1}"
        mac = f"02:be:0a:c8:{0xF0 + k // 256:02x}:{k % 256:02x}"
        eps[net, f"l{k}"] = Endpoint(f"l{k}", net, LOCAL.name, ip, mac, ns)
    return replace(snap, networks=nets, endpoints=eps, revision=snap.revision + len(namespaces))


def run(locals_: int, remotes: int, networks: int = 1) -> list[Added]:
    with private_ovs("l", locals_) as oh:
        base = build_snapshot(remotes, 10, oh.ep, "ovs")
        ovs = OvsDataPlane(
            LOCAL.vtep, ovsdb=oh.inst.db_url, datapath="netdev", underlay_dev="ul0", netns=oh.host
        )
        dp = Incremental(ovs, OvsShortcut(ovs.layout), 60.0, still=ovs.unchanged)
        out: list[Added] = []
        try:
            for k in range(locals_ + 1):
                view = host_view(with_locals(base, list(oh.extra[:k]), networks), LOCAL)
                t0 = time.perf_counter()
                state = dp.observe(view)
                ops = dp.plan(view, state)
                t1 = time.perf_counter()
                dp.apply(ops)
                t2 = time.perf_counter()
                mods = sum(len(o.add) + len(o.delete) for o in ops if isinstance(o, ModFlows))
                if k > 0:
                    out.append(Added(k, (t1 - t0) * 1e3, (t2 - t1) * 1e3, mods))
                for _ in range(3):  # the agent's next pass: reads afresh, then is settled
                    again = dp.plan(view, dp.observe(view))
                    if not again:
                        break
                    dp.apply(again)
        finally:
            ovs.close()
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--locals", type=int, default=100)
    p.add_argument("--remotes", type=int, default=200)
    p.add_argument("--at", default="10,50,100", help="checkpoints (the N-th local endpoint)")
    p.add_argument("--networks", type=int, default=1, help="networks the locals are spread over")
    args = p.parse_args()
    marks = [int(x) for x in args.at.split(",") if int(x) <= args.locals]
    added = run(args.locals, args.remotes, args.networks)
    rows, report = [], {}
    for n in marks:
        around = [a for a in added if n - 4 <= a.n <= n]
        got = {
            "plan_ms": statistics.median(a.plan_ms for a in around),
            "apply_ms": statistics.median(a.apply_ms for a in around),
            "flow_mods": statistics.median(a.flow_mods for a in around),
        }
        report[n] = got
        rows.append([str(n), f"{got['plan_ms']:.2f}", f"{got['apply_ms']:.2f}",
                     f"{got['flow_mods']:.0f}"])  # fmt: skip
    print(f"One more local endpoint on an ovs host ({args.remotes} remote endpoints; locals in "
          f"{args.networks} network(s); median of the 5 passes up to each checkpoint)")  # fmt: skip
    print(table(["LOCAL ENDPOINTS", "OBSERVE+PLAN MS", "APPLY MS", "FLOW MODS"], rows))
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = RESULTS / f"ovs-local-{stamp}.json"
    path.write_text(json.dumps({"args": vars(args), "machine": platform.node(),
                                "checkpoints": report,
                                "passes": [a.__dict__ for a in added]}, indent=2))  # fmt: skip
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

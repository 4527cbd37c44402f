"""What the kernel backend's filters cost: overlay throughput and convergence with the nftables
filters (VXLAN only from members, anti-spoofing) on vs off, in the same lab.

On a 3-host kernel lab, in ``--rounds`` rounds, each once with filters and once without (agents
restarted with ``--no-filters`` and heddle's tables deleted on every host, so nothing filters):
1. iperf3 TCP between endpoints on h1 and h2, ``--runs`` x ``--seconds`` s (bench_dataplane.py);
2. convergence, endpoint written -> first ping reply from h1, ``--samples`` endpoints
   (bench_hostile.samples, as bench_convergence.py measures it).

Run (root): .venv/bin/python bench/bench_filters.py [--rounds 2] [--runs 2] [--samples 20]
Prints a table and writes bench/results/filters-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bench_convergence import percentile
from bench_dataplane import iperf
from bench_hostile import samples, warm_network

from controller.dataplane.nftables import Nft
from controller.desired import DesiredState
from controller.lab.scenario import Scenario
from controller.lab.topology import Lab
from controller.model.nft_filter import LIST_TABLES, ours, render_delete
from controller.output import table
from controller.store.etcd import EtcdKV

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX, MGMT, UNDERLAY = "hbf", "172.31.212.0/24", "172.31.211.0/24"


def set_filters(lab: Lab, on: bool) -> None:
    """Restart every agent with or without filters; without, delete heddle's tables."""
    lab.extra_agent_args = () if on else ("--no-filters",)
    for h in lab.hosts:
        lab.restart_agent(h.name)
        nft = Nft(h.netns)
        try:
            present = ours(nft.run(LIST_TABLES))
            if not on and present:
                nft.run(render_delete())
            assert bool(ours(nft.run(LIST_TABLES))) == on, f"{h.name}: filters not {on}"
        finally:
            nft.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--samples", type=int, default=20)
    args = p.parse_args()
    gbps: dict[str, list[float]] = {"on": [], "off": []}
    conv: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="heddle-bench-") as tmp:
        lab = Lab(Path(tmp) / "lab", prefix=PREFIX, mgmt_subnet=MGMT, underlay_subnet=UNDERLAY)
        lab.up(hosts=3, backend="kernel")
        kv = EtcdKV([lab.etcd_url])
        try:
            sc = Scenario(lab, DesiredState(kv))
            peer_ns = warm_network(sc, "hbf", 6301)
            a = sc.endpoint("hbf", "h1", "ta", ip="10.50.254.1")
            b = sc.endpoint("hbf", "h2", "tb", ip="10.50.254.2")
            sc.converge()
            first = 0
            for _ in range(args.rounds):
                for mode in ("on", "off"):
                    set_filters(lab, mode == "on")
                    for _ in range(args.runs):
                        gbps[mode].append(iperf(lab, a.netns, b.netns, b.ip, args.seconds))
                    got, _ = samples(sc, "hbf", peer_ns, first, args.samples)
                    conv[mode] += got
                    first += args.samples
        finally:
            kv.close()
            lab.down()
    out = {
        "gbps": gbps,
        "convergence_ms": {
            k: {"p50": statistics.median(v), "p99": percentile(v, 99), "n": len(v)}
            for k, v in conv.items()
        },
        "args": vars(args),
        "machine": platform.platform(),
    }
    on, off = statistics.median(gbps["on"]), statistics.median(gbps["off"])
    c = out["convergence_ms"]
    rows = [
        ["iperf3 overlay, median Gbit/s", f"{on:.2f}", f"{off:.2f}", f"{on / off:.3f}"],
        [
            "convergence p50 / p99 ms",
            f"{c['on']['p50']:.1f} / {c['on']['p99']:.1f}",
            f"{c['off']['p50']:.1f} / {c['off']['p99']:.1f}",
            f"{c['on']['p50'] - c['off']['p50']:+.1f} ms (p50)",
        ],
    ]
    print(table(["", "filters on", "filters off", "on vs off"], rows))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"filters-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What observability costs: a reconcile pass and convergence with metrics on vs off, and how
long ``heddle trace`` takes on the 3-host lab.

1. **Pass cost**, in process: a ``Reconciler`` on a ``FakeKernel`` holding one network with 20
   local and 2,000 remote endpoints runs ``--passes`` full no-op passes, alternating (pass by
   pass) between no ``on_result`` at all and ``AgentMetrics.record_pass``, while a thread renders
   the metrics page every 100 ms (a scrape far more often than Prometheus would).
2. **Convergence** (endpoint written -> first ping reply from another host, as in
   bench_convergence.py) on a 3-host kernel lab, in rounds: agents restarted with ``--metrics``
   (scraped every second by this process), ``--samples`` endpoints; agents restarted without,
   ``--samples`` endpoints; ``--rounds`` times.
3. **heddle trace**: ``--traces`` runs of ``python -m controller trace`` across two hosts (the
   whole command: interpreter start, etcd read, two agents asked in parallel), and the same
   work in process (``read_cluster`` + two ``fetch_facts`` + ``trace_path``).

Run (root): .venv/bin/python bench/bench_metrics.py [--passes 2000] [--samples 20] [--rounds 2]
Prints a table and writes bench/results/metrics-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench_convergence import percentile
from bench_hostile import samples, warm_network

from controller.cli.status import read_cluster
from controller.dataplane.fake_kernel import FakeKernel
from controller.desired import DesiredState
from controller.diag.client import fetch_facts
from controller.diag.trace import trace_path
from controller.lab.nsutil import child_env
from controller.lab.scenario import Scenario
from controller.lab.topology import Lab
from controller.model.records import Endpoint, Host, Network
from controller.model.view import Snapshot
from controller.output import table
from controller.reconcile.loop import Reconciler
from controller.reconcile.trigger import Trigger
from controller.store.etcd import EtcdKV
from controller.telemetry.metrics import AgentMetrics, BuildInfo

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX, MGMT, UNDERLAY = "hbm", "172.31.218.0/24", "172.31.217.0/24"


def pass_cost(passes: int) -> dict[str, Any]:
    net = Network("blue", 7, "10.8.0.0/16")
    hosts = {f"h{i}": Host(f"h{i}", f"192.0.2.{i}") for i in range(1, 51)}
    eps = {}
    for i in range(2020):
        host = "h1" if i < 20 else f"h{2 + i % 49}"
        ip = f"10.8.{i // 250}.{1 + i % 250}"
        mac = "02:07:" + ":".join(f"{int(b):02x}" for b in ip.split("."))
        eps["blue", f"e{i}"] = Endpoint(
            f"e{i}", "blue", host, ip, mac, f"ns{i}" if i < 20 else None
        )
    snap = Snapshot(1, {"blue": net}, eps, hosts, frozenset(hosts))
    fk = FakeKernel(hosts["h1"].vtep, netns=tuple(f"ns{i}" for i in range(20)))
    metrics = AgentMetrics(BuildInfo("bench", "kernel", "h1"))
    hook: dict[str, Any] = {"on": None}

    def on_result(result: Any) -> None:
        if hook["on"] is not None:
            hook["on"](result)

    rec: Reconciler[Any, Any] = Reconciler(hosts["h1"], lambda: snap, fk, Trigger(), on_result)
    rec.run_pass()
    stop = threading.Event()

    def scrape() -> None:
        from prometheus_client import generate_latest

        while not stop.wait(0.1):
            generate_latest(metrics.registry)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for i in range(passes):
            mode = ("off", "on")[i % 2]
            hook["on"] = metrics.record_pass if mode == "on" else None
            t0 = time.perf_counter()
            result = rec.run_pass()
            times[mode].append((time.perf_counter() - t0) * 1000)
            assert result.ok and result.changes == 0
    finally:
        stop.set()
        scraper.join()
    return times


def scrape_loop(lab: Lab, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        for h in lab.hosts:
            try:
                with urllib.request.urlopen(
                    f"http://{lab.agents.metrics_address(h.name)}/metrics", timeout=2
                ):
                    pass
            except OSError:
                pass


def trace_times(lab: Lab, n: int) -> dict[str, list[float]]:
    cli, inproc = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-m", "controller", "--etcd", lab.etcd_url, "trace", "hbm", "warmh2",
             "10.50.255.4"], capture_output=True, text=True, env=child_env(),
        )  # fmt: skip
        cli.append((time.perf_counter() - t0) * 1000)
        if res.returncode != 0:
            raise RuntimeError(f"trace failed: {res.stdout}{res.stderr}")
    kv = EtcdKV([lab.etcd_url])
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            snap, statuses, _ = read_cluster(kv)
            src = snap.endpoints["hbm", "warmh2"]
            dst = snap.endpoints["hbm", "warmh3"]
            facts = [fetch_facts(statuses[h].metrics or "", "hbm") for h in ("h2", "h3")]
            report = trace_path(snap, src, dst, facts[0], facts[1])
            inproc.append((time.perf_counter() - t0) * 1000)
            assert report.whole, report
    finally:
        kv.close()
    return {"cli": cli, "in_process": inproc}


def convergence(
    args: argparse.Namespace, tmp: str
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    lab = Lab(Path(tmp) / "lab", prefix=PREFIX, mgmt_subnet=MGMT, underlay_subnet=UNDERLAY)
    lab.up(hosts=3, backend="kernel")
    kv = EtcdKV([lab.etcd_url])
    lat: dict[str, list[float]] = {"on": [], "off": []}
    try:
        sc = Scenario(lab, DesiredState(kv))
        peer_ns = warm_network(sc, "hbm", 6201)
        traces = trace_times(lab, args.traces)
        first = 0
        for _ in range(args.rounds):
            for mode in ("on", "off"):
                lab.agents.serve_metrics = mode == "on"
                for h in lab.hosts:
                    lab.agents.restart(h.name)
                stop = threading.Event()
                scraper = threading.Thread(target=scrape_loop, args=(lab, stop), daemon=True)
                if mode == "on":
                    scraper.start()
                try:
                    got, _ = samples(sc, "hbm", peer_ns, first, args.samples)
                finally:
                    stop.set()
                lat[mode] += got
                first += args.samples
    finally:
        kv.close()
        lab.down()
    return lat, traces


def stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": statistics.median(values), "p99": percentile(values, 99)}


def _pair(d: dict[str, float]) -> str:
    return f"{d['p50']:.3f} / {d['p99']:.3f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--passes", type=int, default=2000)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--traces", type=int, default=20)
    args = p.parse_args()
    passes = pass_cost(args.passes)
    with tempfile.TemporaryDirectory(prefix="heddle-bench-") as tmp:
        lat, traces = convergence(args, tmp)
    out = {
        "pass_ms": {k: stats(v) for k, v in passes.items()},
        "convergence_ms": {k: stats(v) for k, v in lat.items()},
        "trace_ms": {k: stats(v) for k, v in traces.items()},
        "args": vars(args),
        "machine": platform.platform(),
    }
    rows = []
    measured = (
        ("no-op pass (FakeKernel, 2,020 endpoints)", out["pass_ms"]),
        ("convergence, 3-host kernel lab", out["convergence_ms"]),
    )
    for what, d in measured:
        on, off = d["on"], d["off"]
        ratio = f"{on['p50'] / off['p50']:.2f}x / {on['p99'] / off['p99']:.2f}x"
        rows.append([what, _pair(on), _pair(off), ratio])
    print(table(["ms p50 / p99", "metrics on", "metrics off", "on/off"], rows))
    for k, v in out["trace_ms"].items():
        print(
            f"heddle trace ({k}): p50 {v['p50']:.0f} ms, p99 {v['p99']:.0f} ms over {v['n']} runs"
        )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"metrics-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

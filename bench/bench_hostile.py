"""Hostile etcd clients: status size with 1,000 bad records, and convergence with and without a
hostile writer running, in the same lab.

On a fresh 3-host kernel lab (real agents, real etcd):
1. a network with a peer endpoint on h1 and one endpoint on h2 and h3 (the network exists on
   every host before measuring, as in bench_convergence.py);
2. baseline: ``--samples`` endpoints written one at a time, alternating h2 and h3; each sample is
   write -> first echo reply from the peer (a 1 ms pinger started before the write);
3. the same number of samples while a writer thread puts hostile values
   (``controller.lab.hostile``: every kind, cycling) at ``--rate`` puts/s;
4. 1,000 hostile records present at once: the size of every ``/heddle/v1/status/<host>`` and its
   skipped count once every agent has passed the revision that wrote the last one.
Hostile keys are deleted after each phase; the lab is removed at the end.

Run (root): .venv/bin/python bench/bench_hostile.py [--samples 40] [--rate 50]
Prints a table and writes bench/results/hostile-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import threading
import time
from pathlib import Path

from bench_convergence import FAST_ARP, first_reply_probe, percentile

from controller.desired import DesiredState
from controller.lab.etcd_http import EtcdHTTP
from controller.lab.hostile import hostile_keys, hostile_puts
from controller.lab.nsutil import write_sysctls
from controller.lab.pinger import PingResult
from controller.lab.probes import wait_ping, wait_status
from controller.lab.scenario import Scenario
from controller.lab.topology import Lab
from controller.model.records import Network
from controller.output import table
from controller.store import keys
from controller.store.etcd import EtcdKV

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX, MGMT, UNDERLAY = "hbh", "172.31.224.0/24", "172.31.223.0/24"
HOSTS = ["h1", "h2", "h3"]


def _clean(probe: EtcdHTTP) -> None:
    items, _ = probe.list(keys.ROOT)
    for key in hostile_keys(it.key for it in items):
        probe.delete(key)


def _samples(sc: Scenario, peer_ns: str, first: int, n: int) -> list[float]:
    out = []
    for i in range(first, first + n):
        host = ("h2", "h3")[i % 2]
        ip = f"10.50.{i // 200}.{10 + i % 200}"
        ns = sc.lab.add_netns(f"c{i}")
        result: list[PingResult] = []
        pinger = threading.Thread(target=first_reply_probe, args=(peer_ns, ip, result))
        pinger.start()
        time.sleep(0.02)
        t0 = time.monotonic()
        sc.desired.create_endpoint("hbn", host, netns=ns, ip=ip, endpoint_id=f"c{i}")
        pinger.join()
        if result[0].first_reply is not None:
            out.append((result[0].first_reply - t0) * 1000)
    return out


def _writer(probe: EtcdHTTP, net: Network, rate: float, stop: threading.Event,
            count: list[int]) -> None:  # fmt: skip
    rng = random.Random(7)
    i = 0
    while not stop.is_set():
        for put in hostile_puts(rng, 8, [net], [], HOSTS, i):
            probe.put(put.key, put.value)
            count[0] += 1
            if stop.wait(1.0 / rate):
                return
        i += 8


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--rate", type=float, default=50.0, help="hostile puts per second")
    p.add_argument("--bad", type=int, default=1000, help="hostile records for the status size")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="heddle-bench-") as tmp:
        lab = Lab(Path(tmp) / "lab", prefix=PREFIX, mgmt_subnet=MGMT, underlay_subnet=UNDERLAY)
        lab.up(hosts=3, backend="kernel")
        kv = EtcdKV([lab.etcd_url])
        probe = lab.etcd_http()
        try:
            sc = Scenario(lab, DesiredState(kv))
            sc.network("hbn", "10.50.0.0/16", vni=6101)
            net = sc.desired.get_network("hbn")
            peer_ns = lab.add_netns("peer")
            sc.desired.create_endpoint("hbn", "h1", netns=peer_ns, ip="10.50.255.2")
            warm = [sc.endpoint("hbn", h, f"warm{h}", ip=f"10.50.255.{3 + k}")
                    for k, h in enumerate(("h2", "h3"))]  # fmt: skip
            sc.converge()
            write_sysctls(peer_ns, FAST_ARP)
            if any(wait_ping(peer_ns, w.ip, timeout=20) is None for w in warm):
                raise RuntimeError("the lab does not converge; see the agent logs")

            base = _samples(sc, peer_ns, 0, args.samples)
            stop, count = threading.Event(), [0]
            writer = threading.Thread(target=_writer, args=(probe, net, args.rate, stop, count))
            writer.start()
            try:
                t0 = time.monotonic()
                hostile = _samples(sc, peer_ns, args.samples, args.samples)
                elapsed = time.monotonic() - t0
            finally:
                stop.set()
                writer.join()
            _clean(probe)

            eps = sc.desired.endpoints("hbn")
            for put in hostile_puts(random.Random(11), args.bad, [net], eps, HOSTS):
                probe.put(put.key, put.value)
            statuses = wait_status(probe, HOSTS, probe.revision(), timeout=60)
            sizes = {}
            for h in HOSTS:
                item = probe.get(keys.status(h))
                sizes[h] = len(item.value) if item else 0
            skipped = {h: statuses[h].get("skipped_count") for h in HOSTS}
            _clean(probe)
        finally:
            kv.close()
            lab.down()

    def row(name: str, v: list[float]) -> list[object]:
        return [name, len(v), f"{percentile(v, 50):.1f}", f"{percentile(v, 90):.1f}",
                f"{percentile(v, 99):.1f}"]  # fmt: skip

    summary = {
        "baseline_p50_ms": percentile(base, 50),
        "baseline_p99_ms": percentile(base, 99),
        "hostile_p50_ms": percentile(hostile, 50),
        "hostile_p99_ms": percentile(hostile, 99),
        "p50_ratio": percentile(hostile, 50) / percentile(base, 50),
        "hostile_puts": count[0],
        "hostile_puts_per_s": count[0] / elapsed,
        "bad_records": args.bad,
        "status_bytes": sizes,
        "skipped_count": skipped,
    }
    print("Convergence, endpoint written -> first ping reply from another host (ms)")
    print(table(["run", "n", "p50", "p90", "p99"],
                [row("no hostile writer", base),
                 row(f"hostile writer, {summary['hostile_puts_per_s']:.0f} puts/s", hostile)]))
    print(f"p50 ratio hostile/baseline: {summary['p50_ratio']:.2f}")
    print(f"status with {args.bad} hostile records: "
          + ", ".join(f"{h} {sizes[h]} B (skipped_count {skipped[h]})" for h in HOSTS))  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"hostile-{time.strftime('%Y%m%d-%H%M%S')}.json"
    env = {"kernel": platform.release(), "python": platform.python_version()}
    out.write_text(json.dumps({"summary": summary, "baseline_ms": base, "hostile_ms": hostile,
                               "env": env}, indent=2))  # fmt: skip
    print(f"results: {out}")
    return 0 if len(base) == len(hostile) == args.samples else 1


if __name__ == "__main__":
    raise SystemExit(main())

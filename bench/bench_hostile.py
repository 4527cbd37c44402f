"""Hostile etcd clients: status size with 1,000 bad records, and convergence with and without a
hostile writer running, in the same lab.

On a fresh 3-host kernel lab (real agents, real etcd):
1. a network with a peer endpoint on h1 and one endpoint on h2 and h3 (the network exists on
   every host before measuring, as in bench_convergence.py);
2. baseline: ``--samples`` endpoints written one at a time, alternating h2 and h3; each sample is
   write -> first echo reply from the peer (a 1 ms pinger started before the write);
3. the control: the same number of samples while a writer process puts the hostile values
   under ``/bench-noise/``, which no agent reads (the same load on etcd and on the CPUs);
4. the same while the writer puts them where they are meant to hurt, under ``/heddle/v1/``
   (``controller.lab.hostile``: every kind, cycling) at ``--rate`` puts/s;
5. 1,000 hostile records present at once: the size of every ``/heddle/v1/status/<host>`` and its
   skipped count once every agent has passed the revision that wrote the last one.
Hostile keys are deleted after each phase; the lab is removed at the end.

Run (root): .venv/bin/python bench/bench_hostile.py [--samples 40] [--rate 50]
Prints a table and writes bench/results/hostile-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_convergence import fast_neighbours, first_reply_probe, percentile

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


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far (``/proc/PID/stat``)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 3) for k in before}


def _clean(probe: EtcdHTTP) -> None:
    items, _ = probe.list(keys.ROOT)
    for key in hostile_keys(it.key for it in items):
        probe.delete(key)


def warm_network(sc: Scenario, net: str, vni: int) -> str:
    """Network ``net`` (10.50.0.0/16) with a peer endpoint on h1 and one endpoint on h2 and h3,
    converged and pinged, so every sample is "an endpoint joins a network its host already
    has"; returns the peer's namespace."""
    sc.network(net, "10.50.0.0/16", vni=vni)
    peer_ns = sc.lab.add_netns("peer")
    sc.desired.create_endpoint(net, "h1", netns=peer_ns, ip="10.50.255.2")
    warm = [sc.endpoint(net, h, f"warm{h}", ip=f"10.50.255.{3 + k}")
            for k, h in enumerate(("h2", "h3"))]  # fmt: skip
    sc.converge()
    write_sysctls(peer_ns, fast_neighbours(10))
    if any(wait_ping(peer_ns, w.ip, timeout=20) is None for w in warm):
        raise RuntimeError("the lab does not converge; see the agent logs")
    return peer_ns


def samples(
    sc: Scenario, net: str, peer_ns: str, first: int, n: int
) -> tuple[list[float], list[float]]:
    """(write -> first reply, etcd write alone), in ms, for ``n`` new endpoints of ``net``
    (alternating h2 and h3), each pinged from ``peer_ns`` by a 1 ms pinger started before."""
    out, writes = [], []
    for i in range(first, first + n):
        host = ("h2", "h3")[i % 2]
        ip = f"10.50.{i // 200}.{10 + i % 200}"
        ns = sc.lab.add_netns(f"c{i}")
        result: list[PingResult] = []
        pinger = threading.Thread(target=first_reply_probe, args=(peer_ns, ip, result))
        pinger.start()
        time.sleep(0.02)
        t0 = time.monotonic()
        sc.desired.create_endpoint(net, host, netns=ns, ip=ip, endpoint_id=f"c{i}")
        writes.append((time.monotonic() - t0) * 1000)
        pinger.join()
        if result[0].first_reply is not None:
            out.append((result[0].first_reply - t0) * 1000)
    return out, writes


def _writer(
    etcd_url: str, net: Network, rate: float, stop: Any, count: Any, elsewhere: bool
) -> None:
    """The hostile writer, in a process of its own (spawned): its JSON and HTTP work must not
    take the GIL from the bench's 1 ms pinger. ``elsewhere``: the same writes under
    ``/bench-noise/``, which no agent reads (the control: the same load on etcd and the CPUs)."""
    probe = EtcdHTTP(etcd_url)
    rng = random.Random(7)
    i = 0
    while not stop.is_set():
        for put in hostile_puts(rng, 8, [net], [], HOSTS, i):
            key = put.key.replace(keys.ROOT, "/bench-noise/") if elsewhere else put.key
            probe.put(key, put.value)
            with count.get_lock():
                count.value += 1
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
            peer_ns = warm_network(sc, "hbn", 6101)
            net = sc.desired.get_network("hbn")

            pids = {h.name: h.agent.pid for h in lab.hosts if h.agent is not None}
            if lab.record.etcd is not None:
                pids["etcd"] = lab.record.etcd.pid
            cpu0 = _cpu_seconds(pids)
            t_base = time.monotonic()
            base, base_w = samples(sc, "hbn", peer_ns, 0, args.samples)
            t_base = time.monotonic() - t_base
            cpu1 = _cpu_seconds(pids)
            ctx = multiprocessing.get_context("spawn")
            phases: dict[str, dict[str, Any]] = {}
            for name, elsewhere in (("control", True), ("hostile", False)):
                stop, count = ctx.Event(), ctx.Value("i", 0)
                writer = ctx.Process(target=_writer, args=(lab.etcd_url, net, args.rate, stop,
                                                           count, elsewhere))  # fmt: skip
                writer.start()
                try:
                    c0, t0 = _cpu_seconds(pids), time.monotonic()
                    first = args.samples * (len(phases) + 1)
                    lat, wr = samples(sc, "hbn", peer_ns, first, args.samples)
                    elapsed = time.monotonic() - t0
                    phases[name] = {"lat": lat, "write": wr, "seconds": elapsed,
                                    "cpu": _cpu_used(c0, _cpu_seconds(pids)),
                                    "puts_per_s": count.value / elapsed}  # fmt: skip
                finally:
                    stop.set()
                    writer.join(timeout=10)
                    if writer.is_alive():
                        writer.kill()
            _clean(probe)

            eps = sc.desired.endpoints("hbn")
            for put in hostile_puts(random.Random(11), args.bad, [net], eps, HOSTS):
                probe.put(put.key, put.value)
            statuses = wait_status(probe, HOSTS, timeout=60)
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

    ctl, hos = phases["control"], phases["hostile"]
    summary = {
        "baseline_p50_ms": percentile(base, 50),
        "baseline_p99_ms": percentile(base, 99),
        "control_p50_ms": percentile(ctl["lat"], 50),
        "control_p99_ms": percentile(ctl["lat"], 99),
        "hostile_p50_ms": percentile(hos["lat"], 50),
        "hostile_p99_ms": percentile(hos["lat"], 99),
        "p50_ratio_hostile_to_control": percentile(hos["lat"], 50) / percentile(ctl["lat"], 50),
        "p50_ratio_hostile_to_baseline": percentile(hos["lat"], 50) / percentile(base, 50),
        "write_p50_ms": {"baseline": percentile(base_w, 50),
                         "control": percentile(ctl["write"], 50),
                         "hostile": percentile(hos["write"], 50)},
        "puts_per_s": {"control": ctl["puts_per_s"], "hostile": hos["puts_per_s"]},
        "cpu_s": {"baseline": _cpu_used(cpu0, cpu1), "control": ctl["cpu"],
                  "hostile": hos["cpu"]},
        "seconds": {"baseline": t_base, "control": ctl["seconds"], "hostile": hos["seconds"]},
        "bad_records": args.bad,
        "status_bytes": sizes,
        "skipped_count": skipped,
    }  # fmt: skip
    print("Convergence, endpoint written -> first ping reply from another host (ms)")
    print(table(["run", "n", "p50", "p90", "p99"], [
        row("no writer", base),
        row(f"the same writes outside /heddle/ ({ctl['puts_per_s']:.0f}/s)", ctl["lat"]),
        row(f"hostile writes ({hos['puts_per_s']:.0f}/s)", hos["lat"]),
        row("  etcd write alone, no writer", base_w),
        row("  etcd write alone, writes outside", ctl["write"]),
        row("  etcd write alone, hostile writes", hos["write"]),
    ]))  # fmt: skip
    print(
        f"p50 hostile / same writes outside: {summary['p50_ratio_hostile_to_control']:.2f}; "
        f"hostile / no writer: {summary['p50_ratio_hostile_to_baseline']:.2f}"
    )
    for k in ("baseline", "control", "hostile"):
        print(f"CPU seconds, {k} phase ({summary['seconds'][k]:.1f} s): {summary['cpu_s'][k]}")
    print(f"status with {args.bad} hostile records: "
          + ", ".join(f"{h} {sizes[h]} B (skipped_count {skipped[h]})" for h in HOSTS))  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"hostile-{time.strftime('%Y%m%d-%H%M%S')}.json"
    env = {"kernel": platform.release(), "python": platform.python_version()}
    out.write_text(json.dumps({"summary": summary, "baseline_ms": base, "control_ms": ctl["lat"],
                               "hostile_ms": hos["lat"], "env": env}, indent=2))  # fmt: skip
    print(f"results: {out}")
    return 0 if len(base) == len(ctl["lat"]) == len(hos["lat"]) == args.samples else 1


if __name__ == "__main__":
    raise SystemExit(main())

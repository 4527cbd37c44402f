"""Convergence: endpoint written to etcd -> first successful ping from another host.

On a fresh 3-host lab (``--backend kernel`` or ``ovs``: every host on that backend, real agents,
real etcd; ovs is the userspace ``netdev`` datapath with one private OVS per host), a fixed peer
endpoint lives on h1. For each of ``--endpoints`` new endpoints (alternating h2 and h3):
1. create its namespace (not timed: that is the container runtime's job);
2. start a raw-socket pinger in the peer namespace sending every 1 ms to the new address;
3. write the endpoint (``DesiredState.create_endpoint``; t0 just before the write);
4. the latency is the monotonic time of the first echo reply minus t0.
It therefore covers etcd commit, watch delivery to two agents, both agents' passes (local veth +
address on one host; on the peer's host FDB + neighbour entries (kernel) or the unicast and
ARP-responder flows (ovs)) and the first ARP/ICMP round. The peer's eth0 resolves neighbours
with a 10 ms retransmit time (default 1 s), so the probe's own ARP retries add at most ~10 ms
instead of up to a second. (The new endpoint's ARP for the peer is answered at once by its VTEP
or its bridge's ARP responder: the network already exists on h2 and h3.)

Run (root): .venv/bin/python bench/bench_convergence.py [--backend kernel|ovs] [--endpoints 60]
Prints a table and writes bench/results/convergence[-ovs]-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

from controller.desired import DesiredState
from controller.lab.nsutil import write_sysctls
from controller.lab.pinger import PingResult, ping
from controller.lab.probes import wait_ping
from controller.lab.scenario import Scenario
from controller.lab.topology import Lab
from controller.output import table
from controller.store.etcd import EtcdKV

RESULTS = Path(__file__).resolve().parent / "results"
LABS = {  # backend -> lab prefix, management and underlay subnets (distinct: both may run at once)
    "kernel": ("hbc", "172.31.246.0/24", "172.31.245.0/24"),
    "ovs": ("hbo", "172.31.248.0/24", "172.31.247.0/24"),
}
FAST_ARP = {"net/ipv4/neigh/eth0/retrans_time_ms": 10}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def first_reply_probe(netns: str, ip: str, out: list[PingResult]) -> None:
    """Ping ``ip`` every 1 ms from ``netns`` until the first reply (or 20 s); append the result."""
    out.append(ping(netns, ip, count=None, interval=0.001, until_first_reply=True, timeout=20.0))


def measure(lab: Lab, n: int) -> tuple[list[dict[str, object]], list[str]]:
    kv = EtcdKV([lab.etcd_url])
    sc = Scenario(lab, DesiredState(kv))
    samples: list[dict[str, object]] = []
    failures: list[str] = []
    try:
        sc.network("conv", "10.40.0.0/24", vni=6001)
        peer_ns = lab.add_netns("peer")
        sc.desired.create_endpoint("conv", "h1", netns=peer_ns, ip="10.40.0.2")
        sc.converge()
        write_sysctls(peer_ns, FAST_ARP)  # eth0 exists now (non-init netns have no default/)
        # The network exists on h2 and h3 before measuring: every sample is the steady-state
        # case "endpoint joins a network its host already has".
        warm = [sc.endpoint("conv", h, f"warm{h}", ip=f"10.40.0.{3 + k}") for k, h in
                enumerate(("h2", "h3"))]  # fmt: skip
        sc.converge()
        if any(wait_ping(peer_ns, w.ip, timeout=20) is None for w in warm):
            raise RuntimeError("the lab does not converge at all; see the agent logs")
        for i in range(n):
            host = ("h2", "h3")[i % 2]
            ip = f"10.40.0.{10 + i}"
            ns = lab.add_netns(f"c{i}")
            result: list[PingResult] = []
            pinger = threading.Thread(
                target=first_reply_probe, args=(peer_ns, ip, result), daemon=True
            )
            pinger.start()
            time.sleep(0.02)  # the pinger is sending before the write
            t0 = time.monotonic()
            ep = sc.desired.create_endpoint("conv", host, netns=ns, ip=ip, endpoint_id=f"c{i}")
            t_written = time.monotonic()
            pinger.join()
            res = result[0]
            if res.first_reply is None:
                failures.append(f"{ep.id} on {host}: no reply within 20 s")
                continue
            samples.append(
                {
                    "endpoint": ep.id,
                    "host": host,
                    "write_ms": (t_written - t0) * 1000,
                    "first_reply_ms": (res.first_reply - t0) * 1000,
                }
            )
    finally:
        kv.close()
    return samples, failures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--endpoints", type=int, default=60)
    p.add_argument("--backend", choices=tuple(LABS), default="kernel")
    args = p.parse_args()
    prefix, mgmt, underlay = LABS[args.backend]
    with tempfile.TemporaryDirectory(prefix="heddle-bench-") as tmp:
        lab = Lab(Path(tmp) / "lab", prefix=prefix, mgmt_subnet=mgmt, underlay_subnet=underlay)
        lab.up(hosts=3, backend=args.backend)
        try:
            samples, failures = measure(lab, args.endpoints)
        finally:
            lab.down()
    lat = [float(s["first_reply_ms"]) for s in samples]  # type: ignore[arg-type]
    wr = [float(s["write_ms"]) for s in samples]  # type: ignore[arg-type]
    summary = {
        "backend": args.backend,
        "n": len(lat),
        "failures": failures,
        "p50_ms": percentile(lat, 50) if lat else None,
        "p90_ms": percentile(lat, 90) if lat else None,
        "p99_ms": percentile(lat, 99) if lat else None,
        "min_ms": min(lat) if lat else None,
        "max_ms": max(lat) if lat else None,
        "mean_ms": statistics.fmean(lat) if lat else None,
        "write_p50_ms": percentile(wr, 50) if wr else None,
    }
    rows = [
        ["write -> first reply", *(f"{summary[k]:.1f}" for k in ("p50_ms", "p90_ms", "p99_ms",
                                                                  "min_ms", "max_ms"))],
        ["etcd write (txn) only", f"{percentile(wr, 50):.1f}", f"{percentile(wr, 90):.1f}",
         f"{percentile(wr, 99):.1f}", f"{min(wr):.1f}", f"{max(wr):.1f}"],
    ] if lat else []  # fmt: skip
    print(f"Convergence over {len(lat)} endpoints on a 3-host {args.backend} lab (ms)")
    print(table(["measure", "p50", "p90", "p99", "min", "max"], rows))
    if failures:
        print(f"{len(failures)} endpoint(s) never answered: {failures[:5]}")
    RESULTS.mkdir(exist_ok=True)
    tag = "" if args.backend == "kernel" else f"-{args.backend}"
    out = RESULTS / f"convergence{tag}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    env = {"kernel": platform.release(), "python": platform.python_version()}
    out.write_text(json.dumps({"summary": summary, "samples": samples, "env": env}, indent=2))
    print(f"results: {out}")
    return 0 if lat and not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())

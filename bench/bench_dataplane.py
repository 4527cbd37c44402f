"""Data plane: overlay TCP throughput against the underlay, and loss during agent restarts.

On a fresh 3-host lab (kernel backend, real agents):
1. iperf3 TCP, ``--seconds`` s per run, between two endpoints on h1 and h2 (overlay, VXLAN
   through the agents' bridges) and between h1's and h2's underlay addresses (the floor: same
   veths and bridge, no encapsulation). Runs are interleaved (underlay, overlay, underlay, ...)
   so that load drifts on this shared machine hit both alike; median of ``--runs`` each, ratio.
2. A continuous ping (200 packets/s, raw socket, separate process) from the h1 endpoint to the h2
   endpoint while the agents of h1 and h2 are each SIGKILLed and restarted: packets lost.

``--underlay ipv6`` gives the hosts IPv6 VTEPs (VXLAN over IPv6; the underlay iperf3 then runs
between those), ``--overlay 6`` sends the overlay iperf3 and pings between the endpoints' IPv6
addresses (the network is dual-stack).

Run (root): .venv/bin/python bench/bench_dataplane.py [--runs 3 --seconds 5]
[--underlay ipv4|ipv6] [--overlay 4|6]. Prints a table and writes
bench/results/dataplane[-ul6][-ov6]-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from controller.desired import DesiredState
from controller.lab.nsutil import child_env, run_in_netns
from controller.lab.pinger import PingResult, parse_result
from controller.lab.probes import wait_ping
from controller.lab.scenario import Scenario
from controller.lab.topology import Lab
from controller.output import table
from controller.store.etcd import EtcdKV

RESULTS = Path(__file__).resolve().parent / "results"
UNDERLAYS = {"ipv4": "172.31.243.0/24", "ipv6": "fd00:172:31:243::/64"}


def iperf(lab: Lab, client_ns: str, server_ns: str, server_ip: str, seconds: int) -> float:
    """One iperf3 TCP run; receiver-side Gbit/s (``end.sum_received``)."""
    server = lab.popen(
        server_ns, ["iperf3", "-s", "-1", "-B", server_ip],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for _attempt in range(20):  # until the server listens
            time.sleep(0.2)
            r = run_in_netns(
                client_ns, ["iperf3", "-c", server_ip, "-t", str(seconds), "-J"],
                timeout=seconds + 30,
            )  # fmt: skip
            try:
                out = json.loads(r.stdout)
            except ValueError:
                out = {"error": f"no JSON (rc {r.returncode}): {r.stderr[-300:]}"}
            if "connect" not in str(out.get("error", "")):
                break
        if "error" in out or "sum_received" not in out.get("end", {}):
            server.kill()
            said = server.communicate()[0].decode(errors="replace")[-400:]
            raise RuntimeError(
                f"iperf3 to {server_ip}: {out.get('error', 'no result')}; server said: {said}"
            )
        return float(out["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait()


def restart_loss(lab: Lab, src_ns: str, dst_ip: str) -> tuple[PingResult, list[int]]:
    """Ping at 200 pps while both agents restart (SIGKILL); the result and the new PIDs."""
    argv = [sys.executable, "-m", "controller.lab.pinger", dst_ip, "--duration", "10",
            "--interval", "0.005", "--wait", "2"]  # fmt: skip
    proc = lab.popen(src_ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    pids = []
    try:
        time.sleep(1.0)
        for host in ("h1", "h2"):
            lab.agents.kill(host, signal.SIGKILL)
            time.sleep(0.5)
            pids.append(lab.agents.start(host, wait=True))
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not out:
        raise RuntimeError(f"pinger failed: {err.decode()}")
    return parse_result(out.decode()), pids


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--underlay", choices=("ipv4", "ipv6"), default="ipv4")
    p.add_argument("--overlay", choices=("4", "6"), default="4")
    args = p.parse_args()
    under: list[float] = []
    over: list[float] = []
    with tempfile.TemporaryDirectory(prefix="heddle-bench-") as tmp:
        lab = Lab(
            Path(tmp) / "lab",
            prefix="hbd",
            mgmt_subnet="172.31.244.0/24",
            underlay_subnet=UNDERLAYS[args.underlay],
        )
        lab.up(hosts=3)
        kv = EtcdKV([lab.etcd_url])
        try:
            sc = Scenario(lab, DesiredState(kv))
            sc.network("dp", "10.41.0.0/24", vni=6002, subnet6="fd00:41::/64")
            a = sc.endpoint("dp", "h1", "d1")
            b = sc.endpoint("dp", "h2", "d2")
            sc.converge()
            dst = str(b.ip6) if args.overlay == "6" else b.ip
            if wait_ping(a.netns, dst, timeout=20) is None:
                raise RuntimeError("overlay not reachable; see the agent logs")
            h1, h2 = lab.host("h1"), lab.host("h2")
            for _ in range(args.runs):
                under.append(iperf(lab, h1.netns, h2.netns, h2.vtep, args.seconds))
                over.append(iperf(lab, a.netns, b.netns, dst, args.seconds))
            loss, pids = restart_loss(lab, a.netns, dst)
        finally:
            kv.close()
            lab.down()
    mu, mo = statistics.median(under), statistics.median(over)
    res: dict[str, Any] = {
        "underlay_gbps": under,
        "overlay_gbps": over,
        "underlay_median_gbps": mu,
        "overlay_median_gbps": mo,
        "ratio": mo / mu,
        "restart": {
            "sent": loss.sent,
            "received": loss.received,
            "lost": loss.loss,
            "errors": loss.errors,
            "new_agent_pids": pids,
        },
        "underlay": args.underlay,
        "overlay": f"IPv{args.overlay}",
        "env": {"kernel": platform.release(), "python": platform.python_version()},
    }
    print(f"TCP throughput, iperf3 {args.seconds} s x {args.runs}, interleaved (Gbit/s), "
          f"{args.underlay} underlay, IPv{args.overlay} overlay traffic")  # fmt: skip
    print(
        table(
            ["path", "runs", "median"],
            [
                ["underlay h1 -> h2 (ul0)", " ".join(f"{x:.2f}" for x in under), f"{mu:.2f}"],
                ["overlay d1@h1 -> d2@h2", " ".join(f"{x:.2f}" for x in over), f"{mo:.2f}"],
                ["overlay / underlay", "", f"{mo / mu:.2f}"],
            ],
        )
    )
    print(
        f"\nping 200 pps across two agent restarts (SIGKILL + start): "
        f"{loss.received}/{loss.sent} received, {loss.loss} lost, {loss.errors} send errors"
    )
    RESULTS.mkdir(exist_ok=True)
    tag = ("-ul6" if args.underlay == "ipv6" else "") + ("-ov6" if args.overlay == "6" else "")
    out = RESULTS / f"dataplane{tag}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(res, indent=2))
    print(f"results: {out}")
    return 0 if loss.loss == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""``podman run --rm`` on a heddle network vs Debian's ``bridge`` CNI plugin vs ``--network
none``, and the latency of a CNI ADD through ``heddle-cni``.

A 2-host lab with a private Podman per host (``controller/lab/podman.py``, which runs
``heddle-cni`` as ``heddle cni plugin`` writes it) and a heddle network spanning both hosts (a
long-running container on h2, so h1's runs are real cross-host members). On h1, ``podman run
--rm IMAGE true`` is timed ``--runs`` times per network, interleaved so load from other
processes hits each alike; the result is the ratio of the medians, within each phase (the cold
runs come first, then the warm ones: each heddle case is compared with the baseline runs
interleaved with it, never with the other phase's). The baseline network
``bridge`` is the reference plugin with ``host-local`` IPAM in the same Podman (the aim: heddle
<= 1.10x it). Two heddle cases:

* ``warm``: h1 already has a container on the network, so its bridge and VXLAN device exist
  and a run adds and removes a veth pair -- like for like with the bridge plugin, whose bridge
  stays once made;
* ``cold``: the run's container is h1's only member, so every run also makes the agent build
  (and afterwards remove) the network's bridge, VXLAN device and entries.

ADD latency: ``heddle-cni`` run as a runtime runs it (the specification's environment, the
configuration on stdin) for ``--adds`` new namespaces on h1 (warm), each ADD timed from exec to
exit (the executable's start, the hand-off to the agent, the etcd transaction, the agent's pass
that builds the interface and the readiness check); p50 and p99, then a DEL each.

Run (root): .venv/bin/python bench/bench_podman.py [--runs 15 --adds 40]
Writes bench/results/podman-<UTC timestamp>.json. Prints SKIPPED (exit 0) without podman.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from controller.desired import DesiredState
from controller.lab.podman import IMAGE, PodmanLab
from controller.lab.topology import Lab

PREFIX = "hbp"
PHASES = ("cold", "warm")
MGMT, UNDERLAY = "172.31.198.0/24", "172.31.197.0/24"
NETWORK = "bench"
BRIDGE_CONF = {
    "cniVersion": "1.0.0",
    "name": "refbridge",
    "plugins": [
        {"type": "bridge", "bridge": "cni-bench0", "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.199.0.0/24"}]]}},
    ],
}  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_times(pl: PodmanLab, runs: int) -> dict[str, dict[str, list[float]]]:
    """``podman run --rm IMAGE true`` on h1, per phase and network, interleaved: ``cold``
    before h1 has a member of the network, ``warm`` after."""
    nets = {"none": "none", "bridge": "refbridge", "heddle": NETWORK}
    times: dict[str, dict[str, list[float]]] = {p: {k: [] for k in nets} for p in PHASES}
    for name in nets.values():  # warm-up: caches, first use of each plugin
        pl.podman("h1", ["run", "--rm", "--network", name, IMAGE, "true"])
    for phase in PHASES:
        if phase == "warm":
            pl.podman("h1", ["run", "-d", "--name", "resident", "--network", NETWORK, IMAGE,
                             "sleep", "3600"])  # fmt: skip
        for _ in range(runs):
            for key, name in nets.items():
                times[phase][key].append(_timed_run(pl, name))
    return times


def _timed_run(pl: PodmanLab, network: str) -> float:
    t0 = time.perf_counter()
    pl.podman("h1", ["run", "--rm", "--network", network, IMAGE, "true"])
    return time.perf_counter() - t0


def add_times(lab: Lab, plugin: str, adds: int) -> list[float]:
    """CNI ADD through ``plugin`` for ``adds`` fresh namespaces on h1 (then DEL each)."""
    conf = json.dumps({"cniVersion": "1.0.0", "name": NETWORK, "type": "heddle-cni",
                       "socket": str(lab.agents.cni_socket("h1"))}).encode()  # fmt: skip
    out: list[float] = []
    for i in range(adds):
        ns = lab.add_netns(f"bn{i}")
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"bench{i}", "CNI_NETNS":
               f"/run/netns/{ns}", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run([plugin], input=conf, env=env, capture_output=True, check=False)
        out.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise RuntimeError(f"ADD failed: {done.stdout!r}")
        subprocess.run([plugin], input=conf, env={**env, "CNI_COMMAND": "DEL"},
                       capture_output=True, check=True)  # fmt: skip
        lab.remove_netns(ns)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--adds", type=int, default=40)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIPPED: needs root (lab namespaces, podman)")
        return 0
    if shutil.which("podman") is None:
        print("SKIPPED: podman missing (apt install podman containernetworking-plugins)")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="bench-podman-")) / "lab"
    lab = Lab(workdir, prefix=PREFIX, mgmt_subnet=MGMT, underlay_subnet=UNDERLAY)
    pl = PodmanLab(lab)
    try:
        lab.up(hosts=2)
        kv = lab.kv()
        DesiredState(kv).create_network(NETWORK, "10.198.0.0/24")
        kv.close()
        pl.start()
        (pl.cni_dir("h1") / "refbridge.conflist").write_text(json.dumps(BRIDGE_CONF))
        pl.podman("h2", ["run", "-d", "--name", "peer", "--network", NETWORK, IMAGE,
                         "sleep", "3600"])  # fmt: skip
        times = run_times(pl, a.runs)
        adds = add_times(lab, str(pl.base / "bin" / "heddle-cni"), a.adds)
    finally:
        pl.down()
        lab.down()
    med = {p: {k: statistics.median(v) for k, v in t.items()} for p, t in times.items()}
    ratio = {p: {"heddle_over_bridge": m["heddle"] / m["bridge"],
                 "bridge_over_none": m["bridge"] / m["none"],
                 "heddle_over_none": m["heddle"] / m["none"]} for p, m in med.items()}  # fmt: skip
    result: dict[str, Any] = {
        "runs": a.runs,
        "median_s": med,
        "ratios": ratio,
        "times_s": times,
        "add_ms": {"p50": pct(adds, 0.5) * 1000, "p99": pct(adds, 0.99) * 1000, "n": len(adds)},
        "load_avg_after": os.getloadavg(),
    }
    for p in PHASES:
        m, r = med[p], ratio[p]
        print(f"podman run --rm, {p}, median of {a.runs}: none {m['none']:.3f} s, bridge "
              f"{m['bridge']:.3f} s, heddle {m['heddle']:.3f} s; heddle/bridge "
              f"{r['heddle_over_bridge']:.3f}x (aim <= 1.10), bridge/none "
              f"{r['bridge_over_none']:.2f}x")  # fmt: skip
    print(f"CNI ADD through heddle-cni: p50 {result['add_ms']['p50']:.1f} ms, p99 "
          f"{result['add_ms']['p99']:.1f} ms ({len(adds)} samples)")  # fmt: skip
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"podman-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

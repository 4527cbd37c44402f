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
ARP-responder flows (ovs)) and the first ARP/ICMP round. The peer's eth0 keeps Linux's
default neighbour retransmit time (1 s; ``--retrans-ms`` to change it). It starts resolving
the new address at t0, before its host can answer for it; its host's agent completes that
resolution with an announcement once its entries are in (``controller/plan/announce.py``).
With ``--agent-arg=--no-announce`` the probe waits for its own retry instead: about a second
with the default, and up to one retransmit time (Linux: never sooner than 10 ms) whatever
is set -- earlier runs of this bench set 10 ms for that reason. (The new endpoint's ARP for
the peer is answered at once by its VTEP or its bridge's ARP responder: the network already
exists on h2 and h3.)

Where the time goes: every agent logs, per pass, how long its event waited (``waited_ms``) and
when the pass had observed, planned and finished each kind of op (``stages=``, see
``controller/reconcile/loop.py``). The bench reads the two agents' logs after the run and
prints, per stage, its time after the write (p50, p99): the new endpoint's host (event, pass
start, view built, observed -- which for a pass planned from the remembered state includes
its plan --, veth created, address/route/link up, apply done) and the peer's host h1
(event, pass start, FDB and neighbour entries in place, announcement sent, pass done), then
the first reply.
Agent log lines carry wall-clock milliseconds, so stages are good to about 1 ms.

``--family 4,6`` (either backend) measures IPv4 and IPv6-only endpoints in the same lab, in
pairs: each round writes one endpoint of an IPv4 network, then one of an IPv6-only network
(same hosts, the peer of each network on h1, IPv6 probed with ICMPv6 echo, the same
retransmit time), and prints the ratio IPv6 / IPv4 at p50 and p99.

Run (root): .venv/bin/python bench/bench_convergence.py [--backend kernel|ovs|kernel,ovs]
[--endpoints 60] [--family 4|6|4,6] [--retrans-ms 1000]. Prints two tables per backend and
family (with ``kernel,ovs``: both labs up at once and their samples interleaved, round by
round in alternating order, so a machine whose speed drifts during the run weighs on both
alike -- the idle agents of the other lab are the price; then the ratio ovs / kernel at p50
and p99) and writes bench/results/convergence[-<backends>][-v<families>]-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import re
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
from controller.reconcile.loop import PASS_LINE
from controller.store.etcd import EtcdKV

RESULTS = Path(__file__).resolve().parent / "results"
LABS = {  # backend -> lab prefix, management and underlay subnets (distinct: both may run at once)
    "kernel": ("hbc", "172.31.246.0/24", "172.31.245.0/24"),
    "ovs": ("hbo", "172.31.248.0/24", "172.31.247.0/24"),
}


def fast_neighbours(ms: int) -> dict[str, int]:
    """The probe's neighbour retransmit time, both families (``--retrans-ms``)."""
    return {"net/ipv4/neigh/eth0/retrans_time_ms": ms, "net/ipv6/neigh/eth0/retrans_time_ms": ms}


#: family -> (network, VNI, subnet argument, subnet6 argument, address of host number k)
NETWORKS = {
    "4": ("conv", 6001, "10.40.0.0/24", None, "10.40.0.{}"),
    "6": ("conv6", 6002, None, "fd00:40::/64", "fd00:40::{:x}"),
}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


_LOGGED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
_WAITED = re.compile(r" waited_ms=([\d.]+)")
_STAGES = re.compile(r" stages=(\S+)")


def passes_of(log: Path) -> list[dict[str, object]]:
    """The passes that changed something, from an agent log: wall-clock start and end (s),
    when their event came (None: not woken by one) and their stages (name -> wall clock)."""
    out: list[dict[str, object]] = []
    for line in log.read_text(errors="replace").splitlines():
        at, m = _LOGGED.match(line), PASS_LINE.search(line)
        if at is None or m is None or int(m["changes"]) == 0:
            continue
        end = datetime.datetime.strptime(at[1], "%Y-%m-%d %H:%M:%S").timestamp()
        end += int(at[2]) / 1000
        start = end - float(m["duration_ms"]) / 1000
        waited, stages = _WAITED.search(line), _STAGES.search(line)
        marks = {}
        for item in stages[1].split(",") if stages else ():
            name, _, ms = item.rpartition(":")
            marks[name] = start + float(ms) / 1000
        event = start - float(waited[1]) / 1000 if waited else None
        out.append({"start": start, "end": end, "event": event, "stages": marks})
    return out


LOCAL_STAGES = (
    ("event", "event"), ("pass started", "start"), ("view built", "view"),
    ("observed (and planned, if from memory)", "observe"),
    ("veth created", "EnsureVeth"), ("veth created", "EnsurePortVeth"),
    ("port guarded", "GuardPort"), ("OVS port written", "EnsureOvsPort"),
    ("address, route, link up", "ConfigureEndpoint"),
    ("flows in place", "ModFlows"), ("OVS port ready", "AwaitOvsPort"), ("apply done", "end"),
)  # fmt: skip
PEER_STAGES = (
    ("event", "event"), ("pass started", "start"), ("FDB entry in place", "PutFdb"),
    ("neighbour entry in place", "PutNeigh"), ("flows in place", "ModFlows"),
    ("announcement sent", "Announce"), ("pass done", "end"),
)  # fmt: skip


def breakdown(lab: Lab, samples: list[dict[str, object]]) -> dict[str, list[float]]:
    """Per stage (see the module docstring): ms after the write, one value per sample."""
    logs = {h.name: passes_of(lab.agents.log(h.name)) for h in lab.hosts}
    out: dict[str, list[float]] = {}

    def first_after(host: str, t0: float) -> dict[str, object] | None:
        return next((p for p in logs[host] if float(p["end"]) >= t0), None)  # type: ignore[arg-type]

    for s in samples:
        t0 = float(s["t0_wall"])  # type: ignore[arg-type]
        for who, host, stages in (("new endpoint's host", str(s["host"]), LOCAL_STAGES),
                                  ("peer h1", "h1", PEER_STAGES)):  # fmt: skip
            p = first_after(host, t0)
            if p is None:
                continue
            marks: dict[str, object] = {**p, **p["stages"]}  # type: ignore[dict-item]
            for label, key in stages:
                at = marks.get(key)
                if at is not None:
                    out.setdefault(f"{who}: {label}", []).append((float(at) - t0) * 1000)  # type: ignore[arg-type]
        out.setdefault("first reply", []).append(float(s["first_reply_ms"]))  # type: ignore[arg-type]
    return out


def first_reply_probe(netns: str, ip: str, out: list[PingResult]) -> None:
    """Ping ``ip`` every 1 ms from ``netns`` until the first reply (or 20 s); append the result."""
    out.append(ping(netns, ip, count=None, interval=0.001, until_first_reply=True, timeout=20.0))


class Session:
    """One lab's share of a run: its networks, the probe's peers, the samples so far."""

    def __init__(self, lab: Lab, families: list[str], retrans_ms: int) -> None:
        self.lab = lab
        self.kv = EtcdKV([lab.etcd_url])
        self.sc = Scenario(lab, DesiredState(self.kv))
        self.families = families
        self.retrans_ms = retrans_ms
        self.peers: dict[str, str] = {}
        self.samples: list[dict[str, object]] = []
        self.failures: list[str] = []

    def setup(self) -> None:
        """The networks, each with its probe's peer on h1 and an endpoint on h2 and h3: every
        sample is the steady-state case "endpoint joins a network its host already has"."""
        sc, lab = self.sc, self.lab
        for fam in self.families:
            net, vni, subnet, subnet6, addr = NETWORKS[fam]
            sc.network(net, subnet, vni=vni, subnet6=subnet6)
            self.peers[fam] = lab.add_netns(f"peer{fam}")
            ip4, ip6 = (addr.format(2), None) if fam == "4" else (None, addr.format(2))
            sc.desired.create_endpoint(net, "h1", netns=self.peers[fam], ip=ip4, ip6=ip6)
        sc.converge()
        for peer_ns in self.peers.values():  # eth0 exists now (non-init netns have no default/)
            write_sysctls(peer_ns, fast_neighbours(self.retrans_ms))
        for fam in self.families:
            net, _, _, _, addr = NETWORKS[fam]
            warm = []
            for k, h in enumerate(("h2", "h3")):
                a = addr.format(3 + k)
                ip4, ip6 = (a, None) if fam == "4" else (None, a)
                warm.append(sc.endpoint(net, h, f"warm{fam}{h}", ip=ip4, ip6=ip6))
            sc.converge()
            if any(wait_ping(self.peers[fam], w.ip, timeout=20) is None for w in warm):
                raise RuntimeError("the lab does not converge at all; see the agent logs")

    def sample(self, i: int) -> None:
        """Endpoint ``i`` of each family (alternating h2 and h3), timed as the docstring says."""
        host = ("h2", "h3")[i % 2]
        for fam in self.families:
            net, _, _, _, addr = NETWORKS[fam]
            ip = addr.format(10 + i)
            ns = self.lab.add_netns(f"c{fam}{i}")
            result: list[PingResult] = []
            pinger = threading.Thread(
                target=first_reply_probe, args=(self.peers[fam], ip, result), daemon=True
            )
            pinger.start()
            time.sleep(0.02)  # the pinger is sending before the write
            t0_wall = time.time()
            t0 = time.monotonic()
            ep = self.sc.desired.create_endpoint(
                net, host, netns=ns, endpoint_id=f"c{fam}{i}",
                ip=ip if fam == "4" else None, ip6=ip if fam == "6" else None,
            )  # fmt: skip
            t_written = time.monotonic()
            pinger.join()
            res = result[0]
            if res.first_reply is None:
                self.failures.append(f"{ep.id} on {host}: no reply within 20 s")
                continue
            self.samples.append(
                {
                    "endpoint": ep.id,
                    "family": fam,
                    "host": host,
                    "write_ms": (t_written - t0) * 1000,
                    "first_reply_ms": (res.first_reply - t0) * 1000,
                    "t0_wall": t0_wall,
                }
            )

    def close(self) -> None:
        self.kv.close()


def run_backends(
    backends: list[str], n: int, agent_args: list[str], families: list[str], retrans_ms: int
) -> dict[str, dict[str, object]]:
    """A fresh lab per backend, all up at once, and their samples interleaved (round ``i``
    takes endpoint ``i`` on each lab, the labs' order alternating round by round), so a
    machine that slows down or speeds up during the run weighs on every backend alike. Per
    backend and family: the summary, samples and stages."""
    results: dict[str, dict[str, object]] = {}
    with contextlib.ExitStack() as stack:
        sessions: dict[str, Session] = {}
        for backend in backends:
            prefix, mgmt, underlay = LABS[backend]
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="heddle-bench-"))
            lab = Lab(Path(tmp) / "lab", prefix=prefix, mgmt_subnet=mgmt, underlay_subnet=underlay)
            stack.callback(lab.down)
            lab.up(hosts=3, backend=backend, agent_args=agent_args)
            sessions[backend] = session = Session(lab, families, retrans_ms)
            stack.callback(session.close)
        for session in sessions.values():
            session.setup()
        for i in range(n):
            order = backends if i % 2 == 0 else backends[::-1]
            for backend in order:
                sessions[backend].sample(i)
        for backend, session in sessions.items():
            out: dict[str, object] = {}
            for fam in families:
                mine = [s for s in session.samples if s["family"] == fam]
                out[fam] = report(
                    f"{backend}, IPv{fam}", backend, mine,
                    [f for f in session.failures if f.startswith(f"c{fam}")],
                    breakdown(session.lab, mine),
                )  # fmt: skip
            results[backend] = out
    return results


def report(
    what: str,
    backend: str,
    samples: list[dict[str, object]],
    failures: list[str],
    stages: dict[str, list[float]],
) -> dict[str, object]:
    """Print one family's tables; its summary, samples and stages."""
    lat = [float(s["first_reply_ms"]) for s in samples]  # type: ignore[arg-type]
    wr = [float(s["write_ms"]) for s in samples]  # type: ignore[arg-type]
    summary = {
        "backend": backend,
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
    print(f"Convergence over {len(lat)} endpoints on a 3-host lab, {what} (ms)")
    print(table(["measure", "p50", "p90", "p99", "min", "max"], rows))
    if failures:
        print(f"{len(failures)} endpoint(s) never answered: {failures[:5]}")
    print("Where the time goes: each stage's time after the write (ms; from the agents' logs)")
    print(table(
        ["stage", "p50", "p99", "n"],
        [[name, f"{percentile(v, 50):.1f}", f"{percentile(v, 99):.1f}", len(v)]
         for name, v in stages.items()],
    ))  # fmt: skip
    return {"summary": summary, "samples": samples, "stages_ms": stages}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--endpoints", type=int, default=60)
    p.add_argument(
        "--backend",
        default="kernel",
        help="kernel, ovs, or both in one run: kernel,ovs (prints ovs/kernel)",
    )
    p.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        help="an extra flag for every agent (repeat), e.g. --agent-arg=--no-filters",
    )
    p.add_argument(
        "--family",
        default="4",
        help="4, 6 (IPv6-only endpoints) or both in one run: 4,6",
    )
    p.add_argument(
        "--retrans-ms",
        type=int,
        default=1000,
        help="the probe's neighbour retransmit time (ms; 1000 is the kernel's default; "
        "Linux retries no sooner than every 10 ms whatever is set)",
    )
    args = p.parse_args()
    backends = args.backend.split(",")
    families = args.family.split(",")
    if not backends or any(b not in LABS for b in backends):
        p.error(f"--backend: one or more of {', '.join(LABS)}, comma-separated")
    if not families or any(f not in NETWORKS for f in families):
        p.error("--family: 4, 6 or 4,6")
    by_backend = run_backends(backends, args.endpoints, args.agent_arg, families, args.retrans_ms)
    ok = all(r["summary"]["n"] and not r["summary"]["failures"]  # type: ignore[index]
             for fams in by_backend.values() for r in fams.values())  # fmt: skip
    ratio: dict[str, float] = {}

    def summary(backend: str, fam: str) -> dict[str, float]:
        return by_backend[backend][fam]["summary"]  # type: ignore[index,no-any-return]

    if {"kernel", "ovs"} <= by_backend.keys() and ok:
        k, o = summary("kernel", families[0]), summary("ovs", families[0])
        ratio = {q: o[f"{q}_ms"] / k[f"{q}_ms"] for q in ("p50", "p99")}
        print(f"ovs / kernel, same run: p50 {ratio['p50']:.2f}x, p99 {ratio['p99']:.2f}x")
    if families == ["4", "6"] and ok:
        four, six = summary(backends[0], "4"), summary(backends[0], "6")
        ratio = {q: six[f"{q}_ms"] / four[f"{q}_ms"] for q in ("p50", "p99")}
        print(f"IPv6 / IPv4, same run, paired: p50 {ratio['p50']:.2f}x, p99 {ratio['p99']:.2f}x")
    runs: dict[str, dict[str, object]] = {
        b: fams[families[0]] if len(families) == 1 else fams  # type: ignore[misc]
        for b, fams in by_backend.items()
    }
    RESULTS.mkdir(exist_ok=True)
    tag = "" if backends == ["kernel"] else "-" + "-".join(backends)
    tag += "" if families == ["4"] else "-v" + "".join(families)
    out = RESULTS / f"convergence{tag}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    env = {"kernel": platform.release(), "python": platform.python_version()}
    data: dict[str, object] = dict(runs[backends[0]]) if len(backends) == 1 else {"runs": runs}
    out.write_text(json.dumps({**data, "ratio": ratio, "env": env}, indent=2))
    print(f"results: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

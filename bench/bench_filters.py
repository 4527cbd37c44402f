"""What the kernel backend's filters cost: overlay throughput and convergence with the nftables
filters (VXLAN only from members, anti-spoofing) on vs off, in the same lab.

On a 3-host kernel lab:
1. iperf3 TCP between endpoints on h1 and h2 (bench_dataplane.py), ``--pairs`` pairs of
   ``--seconds`` s runs, one with heddle's tables and one without, in alternating order (on/off,
   off/on, ...). The agents are stopped meanwhile and the bench removes and restores the tables
   itself (a few ms), so the two runs of a pair are back to back: this VM's speed drifts by more
   than the filters cost between runs minutes apart. Reported: the median of the per-pair
   ratios with a 95 % bootstrap interval;
2. in ``--rounds`` rounds, each once with filters and once without (agents restarted with
   ``--no-filters`` and heddle's tables deleted on every host, so nothing filters): convergence,
   endpoint written -> first ping reply from h1, ``--samples`` endpoints (bench_hostile.samples,
   as bench_convergence.py measures it);
3. what the filters add to every pass, measured directly on h1 (end-to-end convergence on this
   VM varies by tens of ms, far more than the filters' share): reading heddle's tables (what
   ``observe`` adds) and one ``SyncFilters`` transaction admitting or removing a member VTEP
   (what a membership change adds), ``--ops`` times each.

Run (root): .venv/bin/python bench/bench_filters.py [--pairs 30] [--rounds 2] [--samples 20]
Prints a table and writes bench/results/filters-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench_convergence import percentile
from bench_dataplane import iperf
from bench_hostile import samples, warm_network

from controller.dataplane.nftables import Nft
from controller.desired import DesiredState
from controller.lab.scenario import Placed, Scenario
from controller.lab.topology import Lab
from controller.model.nft_filter import (
    LIST_TABLES,
    make_spec,
    ours,
    render_delete,
    render_list,
    render_sync,
)
from controller.model.nft_guards import render_guard
from controller.model.nft_parse import FilterListing, parse_tables
from controller.output import table
from controller.store.etcd import EtcdKV

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX, MGMT, UNDERLAY = "hbf", "172.31.212.0/24", "172.31.211.0/24"


@contextlib.contextmanager
def filters_lab() -> Iterator[tuple[Lab, Scenario, str, Placed, Placed]]:
    """This bench's 3-host kernel lab: network ``hbf`` warmed (``bench_hostile.warm_network``)
    and endpoints ``ta`` on h1 and ``tb`` on h2 converged; yields (lab, scenario, the warm
    peer's namespace, ta, tb) and removes everything afterwards, even on error."""
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
            yield lab, sc, peer_ns, a, b
        finally:
            kv.close()
            lab.down()


def set_filters(lab: Lab, on: bool) -> None:
    """Restart every agent with or without filters; without, delete heddle's tables."""
    lab.agents.extra_args = () if on else ("--no-filters",)
    for h in lab.hosts:
        lab.agents.restart(h.name)
        nft = Nft(h.netns)
        try:
            present = ours(nft.run(LIST_TABLES))
            if not on and present:
                nft.run(render_delete(present))
            assert bool(ours(nft.run(LIST_TABLES))) == on, f"{h.name}: filters not {on}"
        finally:
            nft.close()


def tables_of(lab: Lab) -> dict[str, FilterListing]:
    """What heddle's tables hold on every host now."""
    out = {}
    for h in lab.hosts:
        nft = Nft(h.netns)
        try:
            objs = [o for f in ours(nft.run(LIST_TABLES)) for o in nft.run(render_list(f))]
        finally:
            nft.close()
        listing = parse_tables(objs)
        assert listing.spec is not None, f"{h.name}: no filters to measure"
        out[h.name] = listing
    return out


def put_tables(lab: Lab, listings: dict[str, FilterListing] | None) -> None:
    """Restore ``listings`` on every host (the members' table and every port's guard), or
    (``None``) remove heddle's tables."""
    for h in lab.hosts:
        nft = Nft(h.netns)
        try:
            present = ours(nft.run(LIST_TABLES))
            if listings is None:
                if present:
                    nft.run(render_delete(present))
                continue
            listing = listings[h.name]
            assert listing.spec is not None
            nft.run(render_sync(listing.spec, ()))
            for port, guards in listing.guards.items():
                nft.run(render_guard(port, guards))
        finally:
            nft.close()


def throughput_pairs(
    lab: Lab, client: Placed, server: Placed, pairs: int, seconds: int
) -> list[tuple[float, float]]:
    """(on, off) Gbit/s per pair; the agents are stopped while it runs (see the docstring)."""
    specs = tables_of(lab)
    for h in lab.hosts:
        lab.agents.stop(h.name)
    out = []
    try:
        for i in range(pairs):
            got: dict[str, float] = {}
            for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
                put_tables(lab, specs if mode == "on" else None)
                got[mode] = iperf(lab, client.netns, server.netns, server.ip, seconds)
            out.append((got["on"], got["off"]))
    finally:
        put_tables(lab, specs)
        for h in lab.hosts:
            lab.agents.start(h.name)
    return out


def bootstrap_median(values: list[float], rounds: int = 2000) -> tuple[float, float]:
    """A 95 % bootstrap interval of the median of ``values`` (seeded: reproducible)."""
    rng = random.Random(4789)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return meds[int(0.025 * rounds)], meds[int(0.975 * rounds) - 1]


def pass_cost(lab: Lab, host: str, ops: int) -> dict[str, dict[str, float]]:
    """ms per read of heddle's tables, per ``SyncFilters`` transaction on ``host``, which
    alternately admits and removes one extra member VTEP, and per ``GuardPort`` transaction
    (one port's chain written again, as for a new endpoint). The agent's tables stay otherwise
    as the agent keeps them; the agent is stopped meanwhile so it does not fight back."""
    nft = Nft(lab.host(host).netns)
    lab.agents.stop(host)
    try:

        def listing() -> FilterListing:
            objs = [o for f in ours(nft.run(LIST_TABLES)) for o in nft.run(render_list(f))]
            return parse_tables(objs)

        first = listing()
        spec = first.spec
        assert spec is not None and first.guards
        port, guards = sorted(first.guards.items())[0]
        extra = make_spec({v: (*vteps, "192.0.2.77") for v, vteps in spec.members}, spec.gateways)
        reads, syncs, guard = [], [], []
        for i in range(ops):
            t0 = time.perf_counter()
            listing()
            reads.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            nft.run(render_sync(extra if i % 2 == 0 else spec, ()))
            syncs.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            nft.run(render_guard(port, guards))
            guard.append((time.perf_counter() - t0) * 1e3)
        nft.run(render_sync(spec, ()))
    finally:
        nft.close()
        lab.agents.start(host)
    return {
        name: {"p50": statistics.median(v), "p99": percentile(v, 99)}
        for name, v in (("read", reads), ("sync", syncs), ("guard", guard))
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--ops", type=int, default=400)
    args = p.parse_args()
    conv: dict[str, list[float]] = {"on": [], "off": []}
    with filters_lab() as (lab, sc, peer_ns, a, b):
        cost = pass_cost(lab, "h1", args.ops)
        pairs = throughput_pairs(lab, a, b, args.pairs, args.seconds)
        first = 0
        for _ in range(args.rounds):
            for mode in ("on", "off"):
                set_filters(lab, mode == "on")
                got, _ = samples(sc, "hbf", peer_ns, first, args.samples)
                conv[mode] += got
                first += args.samples
    ratios = [on / off for on, off in pairs]
    low, high = bootstrap_median(ratios)
    out = {
        "gbps_pairs": pairs,
        "ratio": {"median": statistics.median(ratios), "ci95": [low, high]},
        "convergence_ms": {
            k: {"p50": statistics.median(v), "p99": percentile(v, 99), "n": len(v)}
            for k, v in conv.items()
        },
        "pass_cost_ms": cost,
        "args": vars(args),
        "machine": platform.platform(),
    }
    on = statistics.median(p[0] for p in pairs)
    off = statistics.median(p[1] for p in pairs)
    c = out["convergence_ms"]
    rows = [
        [
            f"iperf3 overlay, {len(pairs)} pairs: median Gbit/s; median per-pair ratio [95% CI]",
            f"{on:.2f}",
            f"{off:.2f}",
            f"{statistics.median(ratios):.3f} [{low:.3f}, {high:.3f}]",
        ],
        [
            "convergence p50 / p99 ms",
            f"{c['on']['p50']:.1f} / {c['on']['p99']:.1f}",
            f"{c['off']['p50']:.1f} / {c['off']['p99']:.1f}",
            f"{c['on']['p50'] - c['off']['p50']:+.1f} ms (p50)",
        ],
        [
            "read tables (resync passes) / one sync (membership changes) / one port's guard "
            "(a new local endpoint), p50 (p99) ms",
            f"{cost['read']['p50']:.2f} ({cost['read']['p99']:.2f}) / "
            f"{cost['sync']['p50']:.2f} ({cost['sync']['p99']:.2f}) / "
            f"{cost['guard']['p50']:.2f} ({cost['guard']['p99']:.2f})",
            "0 / 0 / 0",
            f"+{cost['sync']['p50']:.2f} ms on a pass that changes them (p50)",
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

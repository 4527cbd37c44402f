"""Where the kernel backend's filters spend CPU: the share of the busy CPU each netfilter hook
takes while iperf3 runs over the overlay, with heddle's tables on vs off (root; needs ``perf``,
Debian's ``linux-perf``).

``bench_filters.py`` measures what the filters cost in throughput, a ratio near 1 whose 95 %
interval is about ±2 % on this VM. Sampling the CPU says where that cost is, per hook, with a
spread of about ±0.15 % of the busy CPU: fine enough to compare one rule shape with another.

On a 3-host kernel lab (the same as ``bench_filters.py``'s), with the agents stopped so nothing
rewrites the tables meanwhile: ``--rounds`` rounds, each one run with heddle's tables and one
without, in alternating order. Each run is an iperf3 TCP stream from an endpoint on h1 to one on
h2 for ``--seconds`` s while ``perf record -a -g`` samples both CPUs for ``--seconds`` - 3 s.
Every sample whose stack passes through ``nf_hook_slow`` is charged to the hook that called it:

- ``inet input``: from ``ip_local_deliver`` (table ``inet heddle``'s chain ``input``: every
  VXLAN packet a host receives);
- ``netdev ingress``: from ``__netif_receive_skb_core`` (table ``netdev heddle``: the endpoint
  ports' guards, every frame an endpoint sends);
- ``bridge``: from the bridge's own hooks (``br_netfilter``, Linux's, there without heddle's
  tables too);
- ``other``: any other caller.

Reported per mode: the median over rounds of each hook's share of the busy (non-idle) samples,
and the median Gbit/s (under sampling, so context only: the throughput cost is
``bench_filters.py``'s). Everything is removed afterwards, even on error.

Run: ``.venv/bin/python bench/bench_filter_cpu.py [--rounds 4] [--seconds 7]``. Prints a
table and writes JSON to ``bench/results/filter-cpu-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench_dataplane import iperf
from bench_filters import filters_lab, put_tables, tables_of

from controller.lab.scenario import Placed
from controller.lab.topology import Lab
from controller.output import table

RESULTS = Path(__file__).resolve().parent / "results"
HOOKS = ("inet input", "netdev ingress", "bridge", "other")
IDLE = ("pv_native_safe_halt", "default_idle", "native_safe_halt", "acpi_idle_do_entry")


def hook_of(stack: list[str]) -> str | None:
    """The hook a sample's stack (innermost first, bare symbol names) was charged to; ``None``
    when it does not pass through ``nf_hook_slow``. Pure."""
    try:
        at = stack.index("nf_hook_slow")
    except ValueError:
        return None
    for caller in stack[at + 1 :]:
        if caller == "ip_local_deliver":
            return "inet input"
        if caller.startswith("__netif_receive_skb_core"):
            return "netdev ingress"
        if caller.startswith(("br_", "__br_")):
            return "bridge"
    return "other"


def stacks(script: str) -> list[list[str]]:
    """The samples of ``perf script`` output, each its stack of bare symbol names. Pure."""
    out: list[list[str]] = []
    cur: list[str] | None = None
    for line in script.splitlines():
        if not line.strip():
            if cur is not None:
                out.append(cur)
            cur = None
        elif not line[0].isspace():
            cur = []
        elif cur is not None:
            parts = line.split()
            if len(parts) >= 2:
                cur.append(parts[1].split("+0x", 1)[0])
    if cur is not None:
        out.append(cur)
    return out


def shares(samples: list[list[str]]) -> dict[str, float]:
    """Each hook's share (%) of the busy samples, and ``busy``: how many. Pure."""
    busy = [s for s in samples if s and s[0] not in IDLE]
    got = Counter(h for h in map(hook_of, busy) if h is not None)
    out = {h: 100.0 * got[h] / max(len(busy), 1) for h in HOOKS}
    out["busy"] = float(len(busy))
    return out


def profiled_run(lab: Lab, a: Placed, b: Placed, seconds: int, tmp: Path) -> dict[str, float]:
    """One iperf3 run sampled by ``perf``: Gbit/s and each hook's share."""
    data = tmp / "perf.data"
    rec = subprocess.Popen(
        ["perf", "record", "-a", "-g", "-q", "-o", str(data), "sleep", str(seconds - 3)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        gbps = iperf(lab, a.netns, b.netns, b.ip, seconds)
    finally:
        rec.wait(timeout=seconds + 30)
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,ip,sym"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    data.unlink()
    return {"gbps": gbps, **shares(stacks(script))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=int, default=7)
    args = p.parse_args()
    if shutil.which("perf") is None:
        print("bench_filter_cpu: needs perf (Debian: apt-get install linux-perf); skipped")
        return 0
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="heddle-bench-") as tmp, filters_lab() as lab_etc:
        lab, _sc, _peer, a, b = lab_etc
        specs = tables_of(lab)
        for h in lab.hosts:
            lab.agents.stop(h.name)
        try:
            for i in range(args.rounds):
                for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
                    put_tables(lab, specs if mode == "on" else None)
                    runs[mode].append(profiled_run(lab, a, b, args.seconds, Path(tmp)))
        finally:
            put_tables(lab, specs)
    med = {
        mode: {k: statistics.median(r[k] for r in rs) for k in ("gbps", *HOOKS)}
        for mode, rs in runs.items()
    }
    rows = [
        [k, f"{on[k]:.2f} %", f"{off[k]:.2f} %", f"{on[k] - off[k]:+.2f}"]
        for k in HOOKS
        for on, off in [(med["on"], med["off"])]
    ]
    # Sampling slows the stream, by different amounts run to run: context, not the cost in
    # throughput (that is bench_filters.py's).
    rows.append(["iperf3 Gbit/s under perf", f"{med['on']['gbps']:.1f}",
                 f"{med['off']['gbps']:.1f}", ""])  # fmt: skip
    print(f"Share of the busy CPU per netfilter hook, median of {args.rounds} rounds")
    print(table(["HOOK", "TABLES ON", "TABLES OFF", "ON - OFF"], rows))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"filter-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "machine": platform.platform(),
                                "median": med, "runs": runs}, indent=2))  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Watch latency: a put through ``EtcdKV`` until the heddle cache has it (``on_change`` seen),
against the raw client (``pyetcd`` ``watch_prefix``) put -> event, in the same run.

Starts its own etcd (``EtcdServer`` in a temporary directory) and stops it at the end. Puts are
sequential and alternate between the two paths (so drift on a shared VM hits both alike); each
latency includes the put round trip. Prints a table and writes JSON to ``bench/results/``.

Usage: .venv/bin/python bench/bench_watch.py [--puts 1000] [--warmup 100]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyetcd  # noqa: E402  (the baseline: the raw client, outside heddle's adapter)

from controller.lab.etcd_server import EtcdServer  # noqa: E402
from controller.model import codec  # noqa: E402
from controller.model.records import Host  # noqa: E402
from controller.store import keys  # noqa: E402
from controller.store.cache import Cache  # noqa: E402
from controller.store.etcd import GRPC_OPTIONS, EtcdKV  # noqa: E402
from controller.store.kv import Put, Txn  # noqa: E402
from controller.store.watcher import Watcher  # noqa: E402

RAW_PREFIX = "/bench/raw/"


class Seen:
    """The highest revision a path has delivered, with a condition to wait on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.revision = 0

    def mark(self, revision: int) -> None:
        with self.cond:
            if revision > self.revision:
                self.revision = revision
                self.cond.notify_all()

    def wait(self, revision: int, timeout: float = 5.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.revision >= revision, timeout):
                raise TimeoutError(f"revision {revision} not delivered within {timeout}s")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "max_ms": max(ms),
    }


def run(puts: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="heddle-bench-") as tmp:
        server = EtcdServer(Path(tmp) / "etcd")
        server.start()
        kv = EtcdKV([server.url])
        cache = Cache()
        heddle_seen, raw_seen = Seen(), Seen()
        watcher = Watcher(
            lambda: EtcdKV([server.url]),
            keys.ROOT,
            cache,
            lambda: heddle_seen.mark(cache.revision),
        )
        host, port = server.url.rsplit("//", 1)[1].split(":")
        raw = pyetcd.MultiEndpointEtcd3Client(
            [pyetcd.Endpoint(host, int(port), secure=False, time_retry=1, opts=list(GRPC_OPTIONS))],
            timeout=5,
            failover=True,
        )
        events, cancel = raw.watch_prefix(RAW_PREFIX)

        def consume() -> None:
            for ev in events:
                raw_seen.mark(ev.mod_revision)

        consumer = threading.Thread(target=consume, daemon=True)
        try:
            watcher.start()
            if not watcher.wait_synced(10):
                raise RuntimeError(f"watcher did not sync: {watcher.last_error}")
            consumer.start()
            lat: dict[str, list[float]] = {"heddle": [], "raw": []}
            for i in range(warmup + puts):
                name = f"b{i % 50}"
                value = codec.encode_host(
                    Host(name, f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}")
                )
                for path, key, seen in (
                    ("heddle", keys.host(name), heddle_seen),
                    ("raw", RAW_PREFIX + name, raw_seen),
                ):
                    t0 = time.perf_counter()
                    rev = kv.commit(Txn(success=(Put(key, value.encode()),))).revision
                    seen.wait(rev)
                    if i >= warmup:
                        lat[path].append((time.perf_counter() - t0) * 1000)
            # reference: the put round trip alone
            put_ms = []
            for i in range(200):
                t0 = time.perf_counter()
                kv.commit(Txn(success=(Put("/bench/put-only", str(i).encode()),)))
                put_ms.append((time.perf_counter() - t0) * 1000)
        finally:
            cancel()
            raw.close()
            watcher.stop()
            kv.close()
            server.stop()
    heddle, rawsum = summary(lat["heddle"]), summary(lat["raw"])
    return {
        "bench": "watch_latency",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "pyetcd": "etcd-sdk-python 0.0.7",
        "puts": puts,
        "warmup": warmup,
        "heddle_put_to_on_change": heddle,
        "raw_put_to_event": rawsum,
        "put_only": summary(put_ms),
        "ratio_p50": heddle["p50_ms"] / rawsum["p50_ms"],
        "ratio_p99": heddle["p99_ms"] / rawsum["p99_ms"],
        "cache_events_applied": cache.events_applied,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--puts", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    args = ap.parse_args()
    res = run(args.puts, args.warmup)
    rows = [
        ("heddle: put -> cache on_change", res["heddle_put_to_on_change"]),
        ("raw pyetcd: put -> watch event", res["raw_put_to_event"]),
        ("put round trip alone", res["put_only"]),
    ]
    print(f"watch latency, {res['puts']} puts after {res['warmup']} warm-up (ms)")
    print(f"{'path':34} {'p50':>7} {'p90':>7} {'p99':>7} {'mean':>7} {'max':>7}")
    for label, s in rows:
        print(
            f"{label:34} {s['p50_ms']:7.2f} {s['p90_ms']:7.2f} {s['p99_ms']:7.2f} "
            f"{s['mean_ms']:7.2f} {s['max_ms']:7.2f}"
        )
    print(f"ratio heddle/raw: p50 {res['ratio_p50']:.2f}x, p99 {res['ratio_p99']:.2f}x")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_watch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""IPAM throughput against a real etcd: allocations per second with 1 and 8 concurrent
allocator processes (each one ``DesiredState``, as a long-lived writer such as the Docker plugin
is), beside a baseline in the same run: the same number of bare etcd transactions (one
``create_revision == 0`` put each, unique keys, no contention), which is the floor any
etcd-backed allocator pays. After each run it checks that every allocation is an endpoint with
an address of its own and that no IPAM key is held by anything else (0 duplicates, 0 leaks).

Run: .venv/bin/python bench/bench_ipam.py [--per-worker 250]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

from controller.desired import DesiredState
from controller.lab.etcd_server import EtcdServer
from controller.model import codec
from controller.model.records import Host
from controller.store import keys
from controller.store.etcd import EtcdKV
from controller.store.kv import Compare, Put, Txn


def _alloc(url: str, network: str, n: int) -> list[float]:
    kv = EtcdKV([url])
    ds = DesiredState(kv)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        ds.create_endpoint(network, "h1")
        lat.append(time.perf_counter() - t)
    kv.close()
    return lat


def _bare(url: str, tag: str, n: int) -> list[float]:
    kv = EtcdKV([url])
    lat = []
    for i in range(n):
        key = f"/bench/{tag}/{i}"
        t = time.perf_counter()
        kv.commit(Txn((Compare(key, "create", "=", 0),), (Put(key, b"x"),)))
        lat.append(time.perf_counter() - t)
    kv.close()
    return lat


def _run(pool_size: int, fn: object, args: list[tuple[object, ...]]) -> tuple[float, list[float]]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(pool_size) as pool:
        pool.apply(time.sleep, (0,))  # workers are up before the clock starts
        t = time.perf_counter()
        res = pool.starmap(fn, args)  # type: ignore[arg-type]
        wall = time.perf_counter() - t
    return wall, [x for r in res for x in r]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-worker", type=int, default=250)
    a = ap.parse_args()
    n = a.per_worker
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = EtcdServer(Path(tmp) / "etcd")
        server.start()
        try:
            kv = EtcdKV([server.url])
            kv.commit(
                Txn(
                    success=(
                        Put(keys.host("h1"), codec.encode_host(Host("h1", "192.0.2.1")).encode()),
                    )
                )
            )
            ds = DesiredState(kv)
            for workers in (1, 8):
                net = f"bench{workers}"
                ds.create_network(net, "10.64.0.0/16" if workers == 1 else "10.65.0.0/16")
                wall, lat = _run(workers, _alloc, [(server.url, net, n)] * workers)
                bwall, blat = _run(
                    workers, _bare, [(server.url, f"b{workers}-{w}", n) for w in range(workers)]
                )
                total = workers * n
                eps = ds.endpoints(net)
                owners = {i.key.rsplit("/", 1)[1]: codec.decode_owner(i.value)
                          for i in kv.list(keys.ipam_of(net)).items}  # fmt: skip
                # every allocation is an endpoint, with its own address, and no address is held
                # by anything but its endpoint (nothing leaked, nothing doubled)
                assert len(eps) == total and len({e.ip for e in eps}) == total, "duplicates"
                assert owners == {e.ip: e.id for e in eps}, "leaked or foreign IPAM keys"
                rows.append(
                    {
                        "allocators": workers,
                        "allocations": total,
                        "alloc_per_s": total / wall,
                        "bare_txn_per_s": total / bwall,
                        "ratio_alloc_vs_bare": (total / wall) / (total / bwall),
                        "alloc_p50_ms": statistics.median(lat) * 1e3,
                        "alloc_p99_ms": statistics.quantiles(lat, n=100)[98] * 1e3,
                        "bare_p50_ms": statistics.median(blat) * 1e3,
                    }
                )
            kv.close()
        finally:
            server.stop()
    print(
        f"{'allocators':>10} {'allocs':>7} {'alloc/s':>9} {'bare txn/s':>11} {'ratio':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7}"
    )
    for r in rows:
        print(
            f"{r['allocators']:>10} {r['allocations']:>7} {r['alloc_per_s']:>9.0f} "
            f"{r['bare_txn_per_s']:>11.0f} {r['ratio_alloc_vs_bare']:>6.2f} "
            f"{r['alloc_p50_ms']:>7.2f} {r['alloc_p99_ms']:>7.2f}"
        )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ipam.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""What one ``heddle endpoint create --netns`` costs as the cluster grows, against a real etcd.

The store holds ``bench/cluster_data.py``'s cluster at each size (100 endpoints per host, the
placement index complete and the ``layout`` record saying so). One writer then creates
``--creates`` endpoints on host ``h1`` of a network of their own, each in a namespace of its own
name: the path that looks for the interface among the endpoints already there
(``controller/desired.py``). The baseline, in the same run and store: as many creates on the same
host without a namespace (Docker's path, which does no such check). The ratio of the two p50s
is what the interface check adds; it should not grow with the cluster.

Run: .venv/bin/python bench/bench_endpoint_create.py [--hosts 10,100] [--creates 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cluster_data import Cluster, write  # noqa: E402

from controller.desired import DesiredState  # noqa: E402
from controller.lab.etcd_server import EtcdServer  # noqa: E402
from controller.model import codec  # noqa: E402
from controller.store import keys  # noqa: E402
from controller.store.etcd import EtcdKV  # noqa: E402
from controller.store.kv import Put, Txn  # noqa: E402


def _p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1e3 if len(values) > 1 else values[0] * 1e3


def one_size(hosts: int, creates: int) -> dict[str, object]:
    """A fresh etcd holding the cluster of ``hosts`` hosts; the two kinds of create, alternated."""
    with tempfile.TemporaryDirectory() as tmp:
        server = EtcdServer(Path(tmp) / "etcd")
        server.start()
        kv = EtcdKV([server.url])
        try:
            write(kv, Cluster(hosts), ("pa", "pb"))
            kv.commit(Txn(success=(Put(keys.LAYOUT, codec.encode_layout(True).encode()),)))
            endpoints = len(kv.list(keys.ENDPOINTS).items)
            ds = DesiredState(kv)
            ds.create_network("bench", "10.250.0.0/16", vni=4000)
            checked: list[float] = []
            plain: list[float] = []
            for i in range(creates):
                for netns, out in ((f"b{i}", checked), (None, plain)):
                    t = time.perf_counter()
                    ds.create_endpoint("bench", "h1", netns=netns)
                    out.append(time.perf_counter() - t)
        finally:
            kv.close()
            server.stop()
    return {
        "hosts": hosts,
        "endpoints_in_store": endpoints,
        "creates": creates,
        "netns_p50_ms": _p(checked, 50),
        "netns_p99_ms": _p(checked, 99),
        "plain_p50_ms": _p(plain, 50),
        "plain_p99_ms": _p(plain, 99),
        "ratio_p50": statistics.median(checked) / statistics.median(plain),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", default="10,100", help="cluster sizes, comma-separated")
    ap.add_argument("--creates", type=int, default=200)
    a = ap.parse_args()
    rows = [one_size(int(h), a.creates) for h in a.hosts.split(",")]
    print(f"{'hosts':>6} {'endpoints':>9} {'--netns p50':>11} {'p99':>6} "
          f"{'plain p50':>9} {'p99':>6} {'ratio':>6}")  # fmt: skip
    for r in rows:
        print(
            f"{r['hosts']:>6} {r['endpoints_in_store']:>9} {r['netns_p50_ms']:>11.2f} "
            f"{r['netns_p99_ms']:>6.2f} {r['plain_p50_ms']:>9.2f} {r['plain_p99_ms']:>6.2f} "
            f"{r['ratio_p50']:>6.2f}"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "endpoint-create.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

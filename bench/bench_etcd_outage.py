"""How long an agent stays cut off once etcd is reachable again, after an outage of ``--down`` s.

A 2-host kernel lab (prefix ``hbo``; ``--slot 1``: ``hbp``, to run two trees side by side).
Each round cuts h1's agent off etcd with TCP resets (an nftables table in h1's namespace
rejects everything it sends to etcd's port, which is what a stopped etcd answers), waits
``--down`` seconds (longer than the agent's 10 s lease, so its alive key expires), lifts the
cut and times how long until the agent's alive key is back in etcd (it re-registers:
``controller/membership.py``). The baseline, in the same round: a TCP connection opened to etcd
from h1's namespace right after the cut is lifted (the path itself).

What it shows is the client's own reconnect backoff (docs/platform.md E7): the etcd client
retries on its own under every retry of the agent's, and with gRPC's default backoff (up to
120 s) it stays away long after etcd is back. For the release before the cap, run this file
from a worktree of it with ``PYTHONPATH=<worktree>``.

Run (root): .venv/bin/python bench/bench_etcd_outage.py [--down 60,150] [--rounds 1] [--slot 1]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from controller.dataplane.netns_socket import in_netns  # noqa: E402
from controller.lab.topology import Lab  # noqa: E402
from controller.store import keys  # noqa: E402

CUT = "inet heddle_bench_cut"


def _nft(netns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, text=True,
                   check=True, capture_output=True, timeout=10)  # fmt: skip


def _connect_seconds(netns: str, host: str, port: int, t0: float) -> float:
    """Seconds from ``t0`` until a TCP connection from ``netns`` to etcd succeeds."""
    while True:
        s = in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        try:
            s.settimeout(1.0)
            s.connect((host, port))
            return time.monotonic() - t0
        except OSError:
            time.sleep(0.01)
        finally:
            s.close()


def one_round(lab: Lab, down: float) -> dict[str, float]:
    netns = lab.host("h1").netns
    url = urlsplit(lab.etcd_url)
    host, port = str(url.hostname), int(url.port or 2379)
    probe = lab.etcd_http()
    _nft(
        netns,
        f"add table {CUT}\nadd chain {CUT} out {{ type filter hook output priority 0; }}\n"
        f"add rule {CUT} out ip daddr {host} tcp dport {port} reject with tcp reset\n",
    )
    try:
        time.sleep(down)
        if probe.get(keys.alive("h1")) is not None:
            raise RuntimeError("h1's alive key outlived the cut: is --down longer than its lease?")
    finally:
        _nft(netns, f"delete table {CUT}\n")
    t0 = time.monotonic()
    path = _connect_seconds(netns, host, port, t0)
    while probe.get(keys.alive("h1")) is None:
        if time.monotonic() - t0 > 300:
            raise RuntimeError("h1's agent did not come back within 300 s")
        time.sleep(0.02)
    return {"down_s": down, "agent_back_s": time.monotonic() - t0, "path_back_s": path}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--down", default="60,150", help="outage lengths in seconds")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--slot", type=int, choices=(0, 1), default=0,
                    help="1: another prefix and subnets, to run beside a slot-0 run")  # fmt: skip
    args = ap.parse_args()
    prefix, net = ("hbo", 120) if args.slot == 0 else ("hbp", 122)
    subnets = {"mgmt_subnet": f"172.31.{net}.0/24", "underlay_subnet": f"172.31.{net + 1}.0/24"}
    lab = Lab(Path(f"/tmp/heddle-bench-{prefix}"), prefix=prefix, **subnets)
    lab.up(hosts=2, backend="kernel")
    rows = []
    try:
        for down in (float(d) for d in args.down.split(",")):
            for _ in range(args.rounds):
                row = one_round(lab, down)
                rows.append(row)
                print(f"cut off {row['down_s']:.0f} s: the path is back after "
                      f"{row['path_back_s']:.3f} s, the agent's alive key after "
                      f"{row['agent_back_s']:.1f} s", flush=True)  # fmt: skip
    finally:
        lab.down()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Agent at scale: 50 other hosts and 5,000 remote endpoints in etcd (written directly, with
their placement keys and the layout record, as ``heddle store upgrade`` leaves a store).

Measures, for a real ``heddle agent`` process on the kernel backend in a throw-away namespace:
- the first full pass (the agent's own ``duration_ms`` log) and the time from process start to
  a published converged status;
- the ``verify`` pass right after the start pass (which made links): a full observation and
  plan of everything, changing nothing -- what a remote change would cost planned in full;
- a remote endpoint added, twice: etcd put → status at that revision, and the pass duration,
  planned against the remembered observation (``controller/dataplane/incremental.py``);
- a no-op pass at that size (a change elsewhere wakes the agent; nothing to do here);
- the agent's resident memory once converged.
Baseline in the same run: the same 5,000 FDB + 5,000 neighbour entries written by a bare
pyroute2 loop (replace semantics), i.e. the netlink floor any agent pays.

Run (root): .venv/bin/python bench/bench_agent_scale.py [--endpoints 5000 --hosts 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent_ns import make_host_ns
from pyroute2 import IPRoute, netns

from controller.lab.etcd_server import EtcdServer
from controller.model import codec
from controller.model.naming import derive_mac
from controller.model.records import Endpoint, Host, Network
from controller.reconcile.loop import PASS_LINE
from controller.store import endpoint_ops, keys
from controller.store.etcd import EtcdKV
from controller.store.kv import Put, Txn

NS = "hdbs-h1"
CNS = "hdbs-c1"
BASE_NS = "hdbs-raw"
VTEP = "172.31.252.1"


def _status_rev(kv: EtcdKV) -> tuple[int, bool] | None:
    item = kv.get(keys.status("h1"))
    if item is None:
        return None
    st = codec.decode_status(item.value)
    return st.revision, st.ok


def _wait_status(kv: EtcdKV, revision: int, timeout: float = 120.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        st = _status_rev(kv)
        if st and st[0] >= revision and st[1]:
            return time.perf_counter()
        time.sleep(0.002)
    raise TimeoutError(f"agent did not reach revision {revision}")


def _passes(log: Path) -> list[tuple[int, int, float, str]]:
    out = []
    for m in PASS_LINE.finditer(log.read_text()):
        if m["ok"] == "True":
            out.append(
                (int(m["revision"]), int(m["changes"]), float(m["duration_ms"]), m["trigger"])
            )
    return out


def _baseline(n: int, hosts: int) -> float:
    """Write n FDB + n neighbour entries to one VXLAN device with a bare pyroute2 loop."""
    netns.create(BASE_NS)
    try:
        with IPRoute(netns=BASE_NS, flags=0) as ipr:
            ipr.link(
                "add", ifname="vx", kind="vxlan", vxlan_id=9, vxlan_port=4789, vxlan_learning=0
            )
            idx = ipr.link_lookup(ifname="vx")[0]
            ipr.link("set", index=idx, state="up")
            t = time.perf_counter()
            for i in range(n):
                ip = f"10.200.{i // 250}.{i % 250 + 1}"
                mac = derive_mac(9, ip)
                dst = f"172.31.252.{i % hosts + 2}"
                ipr.fdb("replace", ifindex=idx, lladdr=mac, dst=dst, state=0x80 | 0x40, flags=2)
                ipr.neigh("replace", ifindex=idx, dst=ip, lladdr=mac, state=0x80)
            return time.perf_counter() - t
    finally:
        netns.remove(BASE_NS)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", type=int, default=5000)
    ap.add_argument("--hosts", type=int, default=50)
    a = ap.parse_args()
    n, nh = a.endpoints, a.hosts
    baseline = _baseline(n, nh)

    netns.create(CNS)
    agent: subprocess.Popen[bytes] | None = None
    server: EtcdServer | None = None
    tmp = Path(tempfile.mkdtemp(prefix="heddle-scale-"))
    try:
        make_host_ns(NS, VTEP)
        netns.setns(NS, flags=0)  # this process (and what it spawns) now lives in the lab host
        server = EtcdServer(tmp / "etcd")
        server.start()
        kv = EtcdKV([server.url])
        net = Network("scale", 4000, "10.200.0.0/16")
        ops: list[Put] = [
            Put(keys.network("scale"), codec.encode_network(net).encode()),
            Put(keys.host("h1"), codec.encode_host(Host("h1", VTEP)).encode()),
        ]
        for h in range(nh):
            ops.append(
                Put(
                    keys.host(f"r{h}"),
                    codec.encode_host(Host(f"r{h}", f"172.31.252.{h + 2}")).encode(),
                )
            )
        for i in range(n):
            ip = f"10.200.{i // 250}.{i % 250 + 1}"
            ep = Endpoint(f"e{i}", "scale", f"r{i % nh}", ip, derive_mac(4000, ip), None)
            ops.extend(endpoint_ops.put_endpoint(ep))
            ops.append(Put(keys.ipam("scale", ip), codec.encode_owner(ep.id).encode()))
        local_ip = "10.200.250.1"
        local = Endpoint("local", "scale", "h1", local_ip, derive_mac(4000, local_ip), CNS)
        ops.extend(endpoint_ops.put_endpoint(local))
        ops.append(Put(keys.LAYOUT, codec.encode_layout(True).encode()))
        for i in range(0, len(ops), 100):
            kv.commit(Txn(success=tuple(ops[i : i + 100])))
        rev = kv.list(keys.ROOT).revision

        log = tmp / "agent.log"
        t_start = time.perf_counter()
        with open(log, "wb") as f:
            agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "controller",
                    "--etcd",
                    server.url,
                    "agent",
                    "--host",
                    "h1",
                    "--vtep",
                    VTEP,
                    "--resync-interval",
                    "3600",
                    "--no-plugin",
                ],
                stdout=f,
                stderr=f,
            )
        converged = _wait_status(kv, rev) - t_start
        first = next(p for p in _passes(log) if p[1] > 0)
        rss_kb = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{agent.pid}/status").read_text())[1])  # type: ignore[index]

        def change(eid: str, last: int) -> tuple[float, tuple[int, int, float, str]]:
            """A remote endpoint added: put -> status at its revision, and its pass."""
            ip = f"10.200.251.{last}"
            ep = Endpoint(eid, "scale", "r3", ip, derive_mac(4000, ip), None)
            t = time.perf_counter()
            r = kv.commit(Txn(success=endpoint_ops.put_endpoint(ep))).revision
            took = _wait_status(kv, r) - t
            time.sleep(0.2)
            return took, next(p for p in _passes(log) if p[0] >= r)

        deadline = time.monotonic() + 30
        while not any(p[3] == "verify" for p in _passes(log)) and time.monotonic() < deadline:
            time.sleep(0.05)
        verify = next(p for p in _passes(log) if p[3] == "verify")  # the full read after start
        full, full_pass = change("warm", 6)
        incr, incr_pass = change("incr", 7)

        other = Network("other", 4001, "10.201.0.0/24")
        r2 = kv.commit(
            Txn(success=(Put(keys.network("other"), codec.encode_network(other).encode()),))
        ).revision
        time.sleep(0.5)
        noop_pass = next(p for p in _passes(log) if p[0] >= r2)
        kv.close()
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        if server is not None:
            server.stop()
        for ns in (CNS, NS):
            with contextlib.suppress(OSError):
                netns.remove(ns)
        shutil.rmtree(tmp, ignore_errors=True)

    rows = {
        "endpoints": n,
        "remote_hosts": nh,
        "agent_start_to_converged_s": converged,
        "first_pass_ms": first[2],
        "first_pass_changes": first[1],
        "verify_pass_ms": verify[2],
        "first_change_put_to_applied_ms": full * 1e3,
        "first_change_pass_ms": full_pass[2],
        "second_change_put_to_applied_ms": incr * 1e3,
        "second_change_pass_ms": incr_pass[2],
        "noop_pass_ms": noop_pass[2],
        "agent_rss_mib": rss_kb / 1024,
        "baseline_raw_pyroute2_s": baseline,
        "ratio_first_pass_vs_raw": first[2] / 1e3 / baseline,
    }
    for k, v in rows.items():
        print(f"{k:>32}: {v:.3f}" if isinstance(v, float) else f"{k:>32}: {v}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "agent_scale.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

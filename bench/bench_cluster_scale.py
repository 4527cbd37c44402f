"""Cluster scale: what one agent pays at 10, 100 and 1,000 hosts, scoped against unscoped.

For each size (``cluster_data.Cluster``: H hosts, 100·H endpoints, 2·H networks of up to 50
member hosts; at 1,000 hosts 100,000 endpoints in 2,000 networks) a real etcd is filled
directly, then a real ``heddle agent`` (kernel backend, host ``h0``, endpoints in 20 networks)
runs in a throw-away namespace twice on the same store:

* ``unscoped``: the baseline. With ``--baseline-src DIR`` (a ``git worktree`` of the previous
  release) that release's agent; without it, this agent with no ``/heddle/v1/layout`` record,
  which follows all of ``/heddle/v1/`` as every release before the placement index did (but
  plans incrementally);
* ``scoped``: the layout record present (``controller/store/interest.py``).

Per run: first full pass (its ``duration_ms``) and process start -> status at the revision it
follows; RSS once converged; a remote endpoint added to one of h0's networks, put -> its FDB
and neighbour entries present (a netlink monitor in h0's namespace; 200 changes); 1,000
endpoint changes in networks without an h0 endpoint: agent CPU time (``/proc``) and passes
run; SIGKILL and restart under a 100 pps ping between h0's two namespaced endpoints: loss,
the first pass's changes, start -> first successful pass; then the periodic full resync's
duration (the restarted agent resyncs every 2 s).

Fan-out: W = min(200, H) lightweight watchers (one ``pyetcd`` client per 50 hosts, watches
multiplexed on its stream -- etcd's own cost, not heddle's adapter) hold the watch sets W
agents would hold, scoped and unscoped, and count the events etcd delivers per endpoint
change (200 changes in random networks).

Run (root; about 8 min): .venv/bin/python bench/bench_cluster_scale.py [--sizes 10,100,1000]
  [--baseline-src /tmp/prev]   (git worktree add /tmp/prev <previous release>)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyetcd  # noqa: E402  (lightweight watchers for the fan-out, outside heddle's adapter)
from agent_ns import make_host_ns  # noqa: E402
from bench_convergence import passes_of  # noqa: E402
from cluster_data import LOCAL, VTEP, Cluster, endpoint_txn, remove_txn, write  # noqa: E402
from pyroute2 import IPRoute, netns  # noqa: E402

from controller.lab import ovs as lab_ovs  # noqa: E402
from controller.lab.etcd_server import EtcdServer  # noqa: E402
from controller.lab.pinger import PingResult, ping  # noqa: E402
from controller.model import codec  # noqa: E402
from controller.reconcile.loop import PASS_LINE  # noqa: E402
from controller.store import keys  # noqa: E402
from controller.store.etcd import EtcdKV  # noqa: E402
from controller.store.kv import Delete, Put, Txn  # noqa: E402

NS, P1, P2 = "hdcs-h0", "hdcs-p1", "hdcs-p2"
AF_INET, AF_BRIDGE = 2, 7


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


class Agent:
    """One ``heddle agent`` process in this (the bench's) namespace."""

    def __init__(
        self,
        url: str,
        log: Path,
        resync: float,
        src: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.log = log
        self.started = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller", "--etcd", url, "agent", "--host", "h0",
                 "--vtep", VTEP, "--resync-interval", str(resync), "--no-plugin", *extra],
                stdout=f, stderr=f, env=env, cwd=src,
            )  # fmt: skip

    def passes(self) -> list[dict[str, Any]]:
        return [m.groupdict() for m in PASS_LINE.finditer(self.log.read_text(errors="replace"))]

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status)[1]) / 1024  # type: ignore[index]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_status(kv: EtcdKV, revision: int, timeout: float = 300.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        item = kv.get(keys.status("h0"))
        if item is not None:
            st = codec.decode_status(item.value)
            if st.revision >= revision and st.ok:
                return time.perf_counter()
        time.sleep(0.005)
    raise TimeoutError(f"h0 did not reach revision {revision}")


class NeighMonitor:
    """Neighbour and FDB announcements (``RTMGRP_NEIGH``) of this namespace, read from a plain
    netlink socket: ``(family, NDA_DST, NDA_LLADDR)`` of each ``RTM_NEWNEIGH``."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((0, 4))  # RTMGRP_NEIGH

    def close(self) -> None:
        self.sock.close()

    def read(self, timeout: float) -> list[tuple[int, str | None, str | None]]:
        if not select.select([self.sock], [], [], timeout)[0]:
            return []
        data, out = self.sock.recv(1 << 20), []
        off = 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if kind == 28:  # RTM_NEWNEIGH: ndmsg (12 bytes), then attributes
                family = data[off + 16]
                dst = lladdr = None
                a = off + 28
                while a + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    value = data[a + 4 : a + alen]
                    if atype == 1:  # NDA_DST
                        dst = socket.inet_ntop(socket.AF_INET6 if len(value) == 16 else
                                               socket.AF_INET, value)  # fmt: skip
                    elif atype == 2 and len(value) == 6:  # NDA_LLADDR
                        lladdr = ":".join(f"{b:02x}" for b in value)
                    a += (alen + 3) & ~3
                out.append((family, dst, lladdr))
            off += (length + 3) & ~3
        return out


def wait_entries(mon: NeighMonitor, ip: str, mac: str, timeout: float = 10.0) -> float:
    """Until the neighbour entry for ``ip`` and a VXLAN FDB entry (with a destination) for
    ``mac`` were announced on ``mon``; returns when."""
    neigh = fdb = False
    deadline = time.perf_counter() + timeout
    while not (neigh and fdb):
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"no neighbour/FDB entry for {ip} within {timeout}s")
        for family, dst, lladdr in mon.read(left):
            if family == AF_INET and dst == ip:
                neigh = True
            elif family == AF_BRIDGE and lladdr == mac and dst:
                fdb = True
    return time.perf_counter()


def logged_latency(log: Path, puts: list[float], stage: str) -> list[float]:
    """ms from each put (wall clock) to the end of ``stage`` in the first pass that ended after
    it and has that stage (the agent log's millisecond timestamps: good to about 1 ms)."""
    passes = [p for p in passes_of(log) if stage in p["stages"]]  # type: ignore[operator]
    out = []
    for t in puts:
        p = next((p for p in passes if float(p["end"]) >= t), None)  # type: ignore[arg-type]
        if p is not None:
            out.append((float(p["stages"][stage]) - t) * 1e3)  # type: ignore[index]
    return out


def remote_adds(kv: EtcdKV, c: Cluster, tag: str, n: int = 200) -> tuple[list[Any], list[float]]:
    """Add ``n`` remote endpoints to h0's networks, 10 ms apart: (endpoints, put wall times)."""
    added, puts = [], []
    for k in range(n):
        j = k % LOCAL
        ep = c.endpoint(j, 60 + k // LOCAL, host=c.member_hosts(j)[1])
        ep = type(ep)(f"{tag}{k}", ep.network, ep.host, ep.ip, ep.mac)
        puts.append(time.time())
        kv.commit(endpoint_txn(ep))
        added.append(ep)
        time.sleep(0.01)
    return added, puts


def ovs_mode(kv: EtcdKV, url: str, c: Cluster, target: int, tmp: Path) -> dict[str, Any]:
    """The ovs backend (userspace ``netdev`` datapath, a private OVS in h0's namespace, the
    underlay ``ul0`` in br-phy): first pass, RSS, and put -> the remote endpoint's flows
    committed (the pass's ``ModFlows`` bundle acknowledged), from the agent log."""
    kv.commit(Txn(success=(Put(keys.LAYOUT, codec.encode_layout(True).encode()),)))
    clear_dataplane()
    inst = lab_ovs.start(NS, tmp / "ovs")
    log = tmp / f"agent-{c.hosts}-ovs.log"
    agent = Agent(
        url,
        log,
        3600,
        extra=(
            "--backend",
            "ovs",
            "--ovsdb",
            inst.db_url,
            "--ovs-datapath",
            "netdev",
            "--underlay-dev",
            "ul0",
        ),
    )
    out: dict[str, Any] = {"hosts": c.hosts, "mode": "scoped-ovs"}
    added: list[Any] = []
    try:
        out["start_to_converged_s"] = wait_status(kv, target) - agent.started
        first = next(p for p in agent.passes() if int(p["changes"]) > 0)
        out["first_pass_ms"] = float(first["duration_ms"])
        time.sleep(0.5)
        out["rss_mib"] = agent.rss_mib()
        added, puts = remote_adds(kv, c, "o")
        time.sleep(0.5)
        lat = logged_latency(log, puts, "ModFlows")
        out["remote_add_logged_p50_ms"] = pct(lat, 50)
        out["remote_add_logged_p99_ms"] = pct(lat, 99)
        out["remote_add_logged_samples"] = len(lat)
        kinds = [p for p in agent.passes() if p["trigger"] == "event" and int(p["changes"]) > 0]
        out["remote_add_remembered"] = sum(
            1 for m in re.finditer(r"trigger=event [^\n]*observed=remembered", log.read_text())
        )
        out["event_passes"] = len(kinds)
    finally:
        agent.stop()
        inst.stop(remove_workdir=True)
        for ep in added:
            kv.commit(remove_txn(ep))
        with IPRoute() as ipr:  # the VTEP back on ul0 (the agent moved it to br-phy)
            ul = ipr.link_lookup(ifname="ul0")[0]
            if not ipr.get_addr(index=ul, address=VTEP):
                ipr.addr("add", index=ul, address=VTEP, prefixlen=24)
            ipr.link("set", index=ul, state="up", arp="on")
    return out


def clear_dataplane() -> None:
    """Remove what an agent made in this namespace (links ``hd*``, heddle's nft tables)."""
    with IPRoute() as ipr:
        for link in ipr.get_links():
            if str(link.get_attr("IFLA_IFNAME")).startswith("hd"):
                with contextlib.suppress(Exception):
                    ipr.link("del", index=link["index"])
    for family in ("inet", "netdev", "bridge"):
        subprocess.run(["nft", "delete", "table", family, "heddle"], capture_output=True)


def run_mode(
    kv: EtcdKV, url: str, c: Cluster, scoped: bool, target: int, tmp: Path, src: Path | None
) -> dict[str, Any]:
    if scoped:
        kv.commit(Txn(success=(Put(keys.LAYOUT, codec.encode_layout(True).encode()),)))
    else:
        kv.commit(Txn(success=(Delete(keys.LAYOUT),)))
    clear_dataplane()
    log = tmp / f"agent-{c.hosts}-{'scoped' if scoped else 'unscoped'}.log"
    out: dict[str, Any] = {}
    agent = Agent(url, log, 3600, src)
    try:
        out["start_to_converged_s"] = wait_status(kv, target) - agent.started
        first = next(p for p in agent.passes() if int(p["changes"]) > 0)
        out["first_pass_ms"] = float(first["duration_ms"])
        out["first_pass_changes"] = int(first["changes"])
        time.sleep(0.5)
        out["rss_mib"] = agent.rss_mib()

        added = []  # remote endpoints added to h0's networks, put -> entries present
        lat, puts = [], []
        mon = NeighMonitor()
        try:
            for k in range(200):
                j = k % LOCAL
                ep = c.endpoint(j, 60 + k // LOCAL, host=c.member_hosts(j)[1])
                ep = type(ep)(f"x{k}", ep.network, ep.host, ep.ip, ep.mac)
                puts.append(time.time())
                t = time.perf_counter()
                kv.commit(endpoint_txn(ep))
                lat.append((wait_entries(mon, ep.ip, ep.mac) - t) * 1e3)
                added.append(ep)
                time.sleep(0.01)
        finally:
            mon.close()
        out["remote_add_p50_ms"], out["remote_add_p99_ms"] = pct(lat, 50), pct(lat, 99)
        logged = logged_latency(log, puts, "PutNeigh")  # as the ovs figure is measured
        out["remote_add_logged_p50_ms"] = pct(logged, 50) if logged else None

        time.sleep(1.0)
        cpu0, passes0, t0 = agent.cpu_s(), len(agent.passes()), time.perf_counter()
        for k in range(1000):  # changes in networks h0 takes no part in
            j = LOCAL + k % (c.networks - LOCAL)
            ep = c.endpoint(j, 100 + k // (c.networks - LOCAL))
            ep = type(ep)(f"u{k}", ep.network, ep.host, ep.ip, ep.mac)
            kv.commit(endpoint_txn(ep))
            added.append(ep)
        quiet_since, seen = time.perf_counter(), len(agent.passes())
        while time.perf_counter() - quiet_since < 1.5:  # until no pass for 1.5 s (max 120 s)
            time.sleep(0.25)
            if len(agent.passes()) != seen and time.perf_counter() - t0 < 120:
                quiet_since, seen = time.perf_counter(), len(agent.passes())
        window = time.perf_counter() - t0
        out["unrelated_1000_cpu_s"] = agent.cpu_s() - cpu0
        out["unrelated_1000_passes"] = len(agent.passes()) - passes0
        cpu1 = agent.cpu_s()  # the same wall time with nothing written: the agent's idle cost
        time.sleep(window)
        out["idle_cpu_s_same_time"] = agent.cpu_s() - cpu1

        pinged: list[PingResult] = []
        pinger = threading.Thread(
            target=lambda: pinged.append(ping(P1, c.ping_pair((P1, P2))[1].ip, count=None,
                                              interval=0.01, duration=8.0)),
        )  # fmt: skip
        pinger.start()
        time.sleep(1.0)
        agent.stop(signal.SIGKILL)
        before = len(agent.passes())
        agent = Agent(url, log, 2.0, src)
        while len(agent.passes()) <= before:
            assert agent.proc.poll() is None, "the restarted agent died"
            time.sleep(0.005)
        after = agent.passes()[before]
        out["restart_ready_s"] = time.perf_counter() - agent.started
        out["restart_first_pass_changes"] = int(after["changes"])
        out["restart_first_pass_ok"] = after["ok"] == "True"
        pinger.join()
        out["restart_ping_sent"], out["restart_ping_lost"] = pinged[0].sent, pinged[0].loss
        time.sleep(7.0)
        resyncs = [float(p["duration_ms"]) for p in agent.passes()[before:]
                   if p["trigger"] == "resync"]  # fmt: skip
        out["resync_ms_median"] = statistics.median(resyncs) if resyncs else None
        out["resync_ms_max"] = max(resyncs) if resyncs else None
        out["resyncs"] = len(resyncs)
    finally:
        agent.stop()
    for ep in added:
        kv.commit(remove_txn(ep))
    return out


def watch_sets(c: Cluster, hosts: list[int], scoped: bool) -> dict[int, list[str]]:
    if not scoped:
        return {h: [keys.ROOT] for h in hosts}
    member_of: dict[int, set[int]] = {h: set() for h in hosts}
    for j in range(c.networks):
        for s in range(50):
            h = int(c.endpoint(j, s).host[1:])
            if h in member_of:
                member_of[h].add(j)
    return {
        h: [keys.placement_of(f"h{h}"), keys.NETWORKS, keys.HOSTS, keys.ALIVE,
            *(keys.endpoints_of(f"n{j}") for j in sorted(nets))]
        for h, nets in member_of.items()
    }  # fmt: skip


def fan_out(kv: EtcdKV, url: str, c: Cluster, scoped: bool, changes: int = 200) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    hosts = list(range(1, min(200, c.hosts - 1) + 1))
    sets = watch_sets(c, hosts, scoped)
    count = {"events": 0, "responses": 0}
    lock = threading.Lock()

    def seen(resp: Any) -> None:
        with lock:
            count["responses"] += 1
            count["events"] += len(getattr(resp, "events", ()))

    clients = [pyetcd.client(host, int(port)) for _ in range(0, len(hosts), 50)]
    ids = []
    try:
        for n, h in enumerate(hosts):
            for prefix in sets[h]:
                ids.append(
                    (clients[n // 50], clients[n // 50].add_watch_prefix_callback(prefix, seen))
                )
        watches = len(ids)
        time.sleep(1.0)
        with lock:
            count["events"] = count["responses"] = 0
        rng = random.Random(11)
        eps = []
        for k in range(changes):
            j = rng.randrange(c.networks)
            ep = c.endpoint(j, 150 + k % 40)
            ep = type(ep)(f"f{k}", ep.network, ep.host, ep.ip, ep.mac)
            kv.commit(endpoint_txn(ep))
            eps.append(ep)
        time.sleep(2.0)
        with lock:
            events, responses = count["events"], count["responses"]
    finally:
        for client, wid in ids:
            with contextlib.suppress(Exception):
                client.cancel_watch(wid)
        for client in clients:
            client.close()
    for ep in eps:
        kv.commit(remove_txn(ep))
    return {"watchers": len(hosts), "watches": watches, "events_per_change": events / changes,
            "responses_per_change": responses / changes}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--logs", type=Path, help="copy the agents' logs to this directory")
    ap.add_argument(
        "--baseline-src", type=Path,
        help="run the unscoped agent from this source tree (a worktree of the previous release, "
        "which knows no placement index) instead of this one without the layout record",
    )  # fmt: skip
    ap.add_argument(
        "--ovs", action="store_true", help="also run the ovs backend (scoped) at the largest size"
    )
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    ovs_rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="heddle-cluster-"))
    try:
        make_host_ns(NS, VTEP)
        for ns in (P1, P2):
            netns.create(ns)
        netns.setns(NS, flags=0)  # this process, etcd and the agent live in h0's namespace
        for size in (int(s) for s in a.sizes.split(",")):
            c = Cluster(size)
            server = EtcdServer(
                tmp / f"etcd-{size}", extra_args=("--quota-backend-bytes", str(8 << 30))
            )
            server.start()
            try:
                with EtcdKV([server.url]) as kv:
                    t = time.perf_counter()
                    target = write(kv, c, (P1, P2))
                    print(f"{size} hosts: written in {time.perf_counter() - t:.1f} s", flush=True)
                    for scoped in (False, True):
                        row = {"hosts": size, "endpoints": 100 * size, "networks": c.networks,
                               "mode": "scoped" if scoped else "unscoped"}  # fmt: skip
                        src = None if scoped else a.baseline_src
                        row |= run_mode(kv, server.url, c, scoped, target, tmp, src)
                        row |= fan_out(kv, server.url, c, scoped)
                        print(json.dumps(row), flush=True)
                        rows.append(row)
                        kv.commit(Txn(success=(Delete(keys.status("h0")),)))
                    if a.ovs and size == max(int(x) for x in a.sizes.split(",")):
                        row = ovs_mode(kv, server.url, c, target, tmp)
                        print(json.dumps(row), flush=True)
                        ovs_rows.append(row)
                        kv.commit(Txn(success=(Delete(keys.status("h0")),)))
            finally:
                server.stop()
                clear_dataplane()
    finally:
        if a.logs is not None:
            a.logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("agent-*.log"):
                shutil.copy(log, a.logs / log.name)
        for ns in (P2, P1, NS):
            with contextlib.suppress(OSError):
                netns.remove(ns)
        shutil.rmtree(tmp, ignore_errors=True)
    cols = ["hosts", "mode", "first_pass_ms", "start_to_converged_s", "rss_mib",
            "remote_add_p50_ms", "remote_add_p99_ms", "unrelated_1000_cpu_s",
            "unrelated_1000_passes", "idle_cpu_s_same_time", "resync_ms_median", "restart_ready_s",
            "restart_ping_lost", "restart_first_pass_changes", "events_per_change"]  # fmt: skip
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in cols))
    for r in ovs_rows:
        print(json.dumps(r))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "cluster_scale.json").write_text(json.dumps(rows + ovs_rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

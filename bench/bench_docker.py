"""``docker run --rm`` on a heddle network vs ``--network none``, and the plugin's Join latency.

A 2-host lab whose agents serve the Docker plugin, one real dockerd per host
(``controller.lab.docker``), a heddle network spanning both hosts (a long-running container on
h2). On h1, ``docker run --rm IMAGE true`` is timed ``--runs`` times with ``--network none`` and
with the heddle network, interleaved so load from other processes hits both alike; the result is
the ratio of the medians (the issue aims at <= 1.15; Docker's own swarm overlay adds ~0.33 s
here, a ratio of ~2.5). Two cases:

* ``cold``: the run's container is h1's only member of the network, so every run makes the
  agent build (and afterwards remove) the bridge, the VXLAN device and its FDB entries as well;
* ``warm``: h1 already has a container on the network, so its bridge and VXLAN device exist and
  a run only adds and removes a veth pair (the common case on a busy host).

Baseline in the same run: ``--network floor``, a do-nothing remote plugin served by this
script (static addresses, a bare veth pair made in Join, no etcd, no agent): what any remote
network plugin costs on this dockerd (Docker 20.10 spends ~0.1 s per run on a plugin network in
its own sandbox setup), so ``heddle - floor`` is what heddle itself adds.

Join (and every other plugin method) is timed by the agent itself (its ``plugin <Method>
status=200 ms=...`` log lines) over the timed runs plus ``--join-samples`` more heddle runs per
case, next to the durations of the agent's passes that changed something (what Join waits for).

Every case runs on each engine (``--engines``, default both: Debian's 20.10 and trixie's 26.1,
one lab each), so each engine's heddle figure stands beside its own ``none`` and floor.

Run (root): .venv/bin/python bench/bench_docker.py [--runs 10 --join-samples 20]
            [--engines 20.10,26.1]
Writes bench/results/docker-<UTC timestamp>.json. Prints SKIPPED (exit 0) when docker.io is not
installed or the agent does not serve the plugin.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from controller.lab.docker import IMAGE, DockerLab
from controller.lab.docker_engine import ENGINES
from controller.lab.topology import Lab
from controller.plugin import api, responses
from controller.plugin.routes import Route
from controller.plugin.server import PluginServer
from controller.reconcile.loop import PASS_LINE

PREFIX = "hlb"
MGMT, UNDERLAY = "172.31.238.0/24", "172.31.237.0/24"
SUBNET = "10.31.0.0/24"
NETWORK = "bench"
FLOOR = "floor"
FLOOR_SUBNET = "10.32.0.0/24"


class FloorPlugin:
    """The cheapest remote network + IPAM plugin that works: addresses from a counter, Join
    makes a bare veth pair in the host's namespace, DeleteEndpoint deletes it."""

    def __init__(self, netns: str) -> None:
        self._ipr = IPRoute(netns=netns, flags=0)
        self._lock = threading.Lock()
        self._next = 1

    def routes(self) -> dict[str, Route]:
        def fixed(iface: Any, body: dict[str, Any]) -> Route:
            return Route(iface, lambda o: _Fixed(body))

        return {
            "/Plugin.Activate": fixed("Plugin", {"Implements": ["NetworkDriver", "IpamDriver"]}),
            "/NetworkDriver.GetCapabilities": fixed("NetworkDriver", {"Scope": "local"}),
            "/IpamDriver.GetCapabilities": fixed("IpamDriver", {}),
            "/IpamDriver.GetDefaultAddressSpaces": fixed(
                "IpamDriver", {"LocalDefaultAddressSpace": "fl", "GlobalDefaultAddressSpace": "fg"}
            ),
            "/IpamDriver.RequestPool": fixed(
                "IpamDriver", {"PoolID": FLOOR, "Pool": FLOOR_SUBNET, "Data": {}}
            ),
            "/IpamDriver.RequestAddress": Route("IpamDriver", self._address),
            "/IpamDriver.ReleaseAddress": fixed("IpamDriver", {}),
            "/IpamDriver.ReleasePool": fixed("IpamDriver", {}),
            "/NetworkDriver.CreateNetwork": fixed("NetworkDriver", {}),
            "/NetworkDriver.DeleteNetwork": fixed("NetworkDriver", {}),
            "/NetworkDriver.CreateEndpoint": fixed("NetworkDriver", {}),
            "/NetworkDriver.Join": Route("NetworkDriver", self._join),
            "/NetworkDriver.ProgramExternalConnectivity": fixed("NetworkDriver", {}),
            "/NetworkDriver.EndpointOperInfo": fixed("NetworkDriver", {"Value": {}}),
            "/NetworkDriver.RevokeExternalConnectivity": fixed("NetworkDriver", {}),
            "/NetworkDriver.Leave": fixed("NetworkDriver", {}),
            "/NetworkDriver.DeleteEndpoint": Route("NetworkDriver", self._delete),
        }

    def _address(self, o: Any) -> responses.Response:
        if (o.get("Options") or {}).get(api.REQUEST_ADDRESS_TYPE) == api.GATEWAY_ADDRESS_TYPE:
            return _Fixed({"Address": "10.32.0.1/24", "Data": {}})
        with self._lock:
            self._next = self._next % 250 + 1
            return _Fixed({"Address": f"10.32.0.{self._next + 1}/24", "Data": {}})

    def _join(self, o: Any) -> responses.Response:
        eid = str(o["EndpointID"])[:8]
        with self._lock:
            self._veth(eid)
        return _Fixed(
            {"InterfaceName": {"SrcName": f"flp{eid}", "DstPrefix": "eth"}, "Gateway": "10.32.0.1"}
        )

    def _veth(self, eid: str) -> None:
        self._ipr.link("add", ifname=f"flh{eid}", kind="veth", peer={"ifname": f"flp{eid}"})
        self._ipr.link("set", index=self._ipr.link_lookup(ifname=f"flh{eid}")[0], state="up")

    def _delete(self, o: Any) -> responses.Response:
        with self._lock:
            found = self._ipr.link_lookup(ifname=f"flh{str(o['EndpointID'])[:8]}")
            if found:
                self._ipr.link("del", index=found[0])
        return _Fixed({})

    def close(self) -> None:
        self._ipr.close()


class _Fixed:
    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body

    def to_json(self) -> dict[str, Any]:
        return self._body


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"n": len(xs), "p50": _pct(xs, 50), "p99": _pct(xs, 99), "max": max(xs)}


def _timed(dl: DockerLab, network: str) -> float:
    argv = dl.docker_argv("h1", "run", "--rm", "--network", network, IMAGE, "true")
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"docker run --network {network} failed: {proc.stderr.strip()}")
    return dt


def _log_since(log: Path, offset: int) -> str:
    return log.read_bytes()[offset:].decode(errors="replace")


def _measure(dl: DockerLab, log: Path, runs: int, join_samples: int) -> dict[str, Any]:
    offset = log.stat().st_size
    none: list[float] = []
    floor: list[float] = []
    heddle: list[float] = []
    for _ in range(runs):
        none.append(_timed(dl, "none"))
        floor.append(_timed(dl, FLOOR))
        heddle.append(_timed(dl, NETWORK))
    for _ in range(join_samples):
        _timed(dl, NETWORK)
    time.sleep(0.5)  # the agent's last log lines
    text = _log_since(log, offset)
    calls: dict[str, list[float]] = {}
    for m in re.finditer(r"plugin (\S+) status=200 ms=([\d.]+)", text):
        calls.setdefault(m[1], []).append(float(m[2]))
    passes = [
        float(m["duration_ms"])
        for m in PASS_LINE.finditer(text)
        if m["ok"] == "True" and int(m["changes"]) > 0
    ]
    med_none, med_floor = statistics.median(none), statistics.median(floor)
    med_heddle = statistics.median(heddle)
    return {
        "docker_run_none_s": {"median": med_none, "min": min(none), "max": max(none)},
        "docker_run_floor_s": {"median": med_floor, "min": min(floor), "max": max(floor)},
        "docker_run_heddle_s": {"median": med_heddle, "min": min(heddle), "max": max(heddle)},
        "ratio_of_medians": med_heddle / med_none,
        "floor_ratio_of_medians": med_floor / med_none,
        "heddle_minus_floor_s": med_heddle - med_floor,
        "join_ms": _stats(calls.get("NetworkDriver.Join", [])),
        "agent_pass_with_changes_ms": _stats(passes),
        "plugin_calls_ms": {k: _stats(v) for k, v in sorted(calls.items())},
    }


def _report(runs: int, cases: dict[str, dict[str, Any]]) -> None:
    for case, r in cases.items():
        none, heddle = r["docker_run_none_s"]["median"], r["docker_run_heddle_s"]["median"]
        floor = r["docker_run_floor_s"]["median"]
        print(
            f"[{case}] docker run --rm, median of {runs}: --network none {none:.3f} s, heddle "
            f"{heddle:.3f} s, ratio {r['ratio_of_medians']:.2f} (aim <= 1.15); floor plugin "
            f"{floor:.3f} s, ratio {r['floor_ratio_of_medians']:.2f}; heddle - floor "
            f"{(heddle - floor) * 1000:.0f} ms"
        )
        for name in ("join_ms", "agent_pass_with_changes_ms"):
            st = r[name]
            print(
                f"[{case}] {name}: n={st['n']} p50={st['p50']:.1f} p99={st['p99']:.1f} "
                f"max={st['max']:.1f}"
            )
        for k, v in r["plugin_calls_ms"].items():
            print(f"[{case}]   {k:42s} n={v['n']:3d} p50={v['p50']:7.2f} p99={v['p99']:7.2f}")


def _engine_cases(engine: str, runs: int, join_samples: int) -> dict[str, dict[str, Any]] | None:
    """The cold and warm cases on a fresh 2-host lab running ``engine``; None to skip."""
    cases: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(Path(tmp) / "lab", prefix=PREFIX, mgmt_subnet=MGMT, underlay_subnet=UNDERLAY)
        dl = DockerLab(lab, engine=engine)
        lab.agents.plugin_socket = dl.plugin_socket
        floor_plugin: FloorPlugin | None = None
        floor_server: PluginServer | None = None
        try:
            lab.up(hosts=2)
            if not dl.wait_plugins(15.0):
                print("SKIPPED: the agents do not serve the Docker plugin (--plugin-socket)")
                return None
            dl.start()
            floor_plugin = FloorPlugin(lab.host("h1").netns)
            floor_server = PluginServer(
                dl.plugin_dir("h1") / f"{FLOOR}.sock", floor_plugin.routes()
            )
            floor_server.start()
            dl.docker("h1", "network", "create", "-d", FLOOR, "--ipam-driver", FLOOR, FLOOR)
            for i, h in enumerate(("h1", "h2")):
                sub = ["--subnet", SUBNET] if i == 0 else []
                dl.docker(h, "network", "create", "-d", "heddle", "--ipam-driver", "heddle",
                          "-o", f"heddle.network={NETWORK}", "--ipam-opt",
                          f"heddle.network={NETWORK}", *sub, NETWORK)  # fmt: skip
            sleeper = (IMAGE, "sleep", "3600")
            dl.docker("h2", "run", "-d", "--name", "peer", "--network", NETWORK, *sleeper)
            for net in ("none", FLOOR, NETWORK) * 2:  # warm-up: image, page cache
                _timed(dl, net)
            log = lab.agents.log("h1")
            cases[f"{engine}/cold"] = _measure(dl, log, runs, join_samples)
            dl.docker("h1", "run", "-d", "--name", "resident", "--network", NETWORK, *sleeper)
            cases[f"{engine}/warm"] = _measure(dl, log, runs, join_samples)
        finally:
            if floor_server is not None:
                floor_server.stop()
            if floor_plugin is not None:
                floor_plugin.close()
            dl.down()
            lab.down()
    return cases


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--join-samples", type=int, default=20)
    ap.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="Docker engines to run on, one lab each (default: %(default)s)",
    )
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIPPED: needs root (lab namespaces, dockerd)")
        return 0
    if not Path("/usr/sbin/dockerd").exists():
        print("SKIPPED: /usr/sbin/dockerd missing (apt install docker.io)")
        return 0
    cases: dict[str, dict[str, Any]] = {}
    for engine in a.engines.split(","):
        got = _engine_cases(engine.strip(), a.runs, a.join_samples)
        if got is None:
            return 0
        cases.update(got)
    _report(a.runs, cases)
    result = {
        "runs": a.runs,
        "join_samples": a.join_samples,
        "cases": cases,
        "load_avg_after": os.getloadavg(),
        "python": sys.version.split()[0],
    }
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"docker-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

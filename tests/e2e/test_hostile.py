"""Chaos: a hostile etcd client writes while endpoints ping across hosts.

Every kind of ``controller.lab.hostile`` (deep nesting, huge strings, wrong types, duplicates of
live addresses, MACs, interfaces and VNIs, unusable VTEPs) is written in rounds, interleaved
with valid changes (endpoints added and removed). The cluster must not notice the hostile
writes: every valid change is applied, no packet between existing endpoints is lost, the
winners of duplicates stay reachable at their own MAC, every hostile value is reported (in
each agent's log and in the skipped count of its status), and status stays small.

Kernel backend only: what is under test is decided before any backend (the cache and the host
view), and the ovs lab adds its own noise -- once, while the machine ran other tests too, one
ping of 1,400 was lost on the ``netdev`` datapath while ports were added and removed on the
pinged host (not reproduced in quiet re-runs; the ovs datapath's behaviour under port churn is
the OVS latency work's to pin down).
"""

from __future__ import annotations

import random
import time

from controller.lab.hostile import KINDS, HostilePut, hostile_keys, hostile_puts
from controller.lab.nsutil import run_in_netns
from controller.lab.probes import wait_ping, wait_status
from controller.lab.scenario import Placed, Scenario, continuous_ping
from controller.lab.topology import Lab
from controller.store import keys

LAB_BACKENDS = ("kernel",)
ROUNDS = 4


def _neighbour_mac(netns: str, ip: str) -> str | None:
    out = run_in_netns(netns, ["ip", "neigh", "show", ip]).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


def test_hostile_writes_stop_nothing_and_break_no_isolation(lab: Lab, overlay: Scenario) -> None:
    overlay.network("hblue", "10.40.0.0/24", vni=6001)
    overlay.network("hred", "10.41.0.0/24", vni=6002)
    base = [overlay.endpoint("hblue", h.name, f"hb{k}") for k, h in enumerate(lab.hosts, 1)]
    overlay.endpoint("hred", lab.hosts[0].name, "hr1")
    overlay.endpoint("hred", lab.hosts[1].name, "hr2")
    overlay.converge()
    for a, b in ((base[0], base[1]), (base[2], base[0])):
        assert wait_ping(a.netns, b.ip, timeout=10.0), f"{a.host} -> {b.host} before the chaos"

    probe = lab.etcd_http()
    desired = overlay.desired
    rng = random.Random(20261206)
    hosts = [h.name for h in lab.hosts]
    written: list[HostilePut] = []
    added: list[Placed] = []
    try:
        with (
            continuous_ping(lab, base[0], base[1], 14.0, 0.01) as r01,
            continuous_ping(lab, base[2], base[0], 14.0, 0.01) as r20,
        ):
            for i in range(ROUNDS):
                live_nets = [desired.get_network("hblue"), desired.get_network("hred")]
                # victims are endpoints that stay: a duplicate of a removed endpoint is no
                # longer a conflict but a record like any other
                live_eps = [desired.get_endpoint(p.network, p.id) for p in base]
                puts = hostile_puts(rng, len(KINDS), live_nets, live_eps, hosts, i * len(KINDS))
                for put in puts:
                    probe.put(put.key, put.value)
                    written.append(put)
                added.append(overlay.endpoint("hblue", hosts[i % 3], f"hv{i}"))
                if i == 2:  # a valid removal among the hostile writes
                    overlay.remove(added.pop(0))
                overlay.converge(timeout=20.0)
                time.sleep(0.5)
        for r in (r01[0], r20[0]):
            assert r.sent > 500 and r.loss == 0, f"lost {r.loss} of {r.sent}: seq {r.lost[:10]}"

        # every valid change was applied: the added endpoints answer from other hosts
        for p in added:
            src = next(b for b in base if b.host != p.host)
            assert wait_ping(src.netns, p.ip, timeout=10.0), f"{src.host} -> new {p.host} {p.ip}"
        # the winners of duplicated addresses and MACs are reached at their own MAC
        for a in base:
            for b in base:
                if a.host != b.host:
                    assert wait_ping(a.netns, b.ip, timeout=5.0)
                    assert _neighbour_mac(a.netns, b.ip) == b.mac, f"{b.ip} hijacked on {a.host}"

        # every hostile value is reported by every agent, and status stays small and ok
        tags = {put.key.rsplit("/", 1)[-1] for put in written}
        statuses = wait_status(probe, hosts, timeout=20.0)
        for h in hosts:
            raw = probe.get(keys.status(h))
            assert raw is not None and len(raw.value) < 4096, f"status of {h}: {len(raw.value)} B"
            st = statuses[h]
            assert st["ok"] is True and st.get("stuck") is None, st
            assert isinstance(st["skipped_count"], int) and st["skipped_count"] >= len(tags) - 4
            log = lab.agents.log(h).read_text(errors="replace")
            missing = sorted(t for t in tags if t not in log)
            assert not missing, f"{h} did not report {missing[:5]}"
    finally:
        items, _ = probe.list(keys.ROOT)
        for key in hostile_keys(it.key for it in items):
            probe.delete(key)

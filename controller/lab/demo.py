"""The lab demo: two overlapping networks across three hosts, reachability and isolation.

``blue`` and ``green`` both use 10.10.0.0/24 (different VNIs). Each of the first three hosts gets
one endpoint of each, in its own container namespace, with fixed addresses: blue .11/.12/.13,
green .21/.22/.23. So every green address exists *only* in green, which makes the isolation
checks meaningful despite the overlap:

* plain: a blue endpoint pings a green-only address on another host -> must get no reply;
* forged: the blue endpoint is given a static ARP entry mapping that address to the green
  endpoint's real MAC, and pings again -> no reply, and a capture on the green endpoint's eth0
  (promiscuous) must see no IPv4 packet from the blue source address: the frame stays in
  blue's VNI, whatever L2 address it carries.
Both directions are checked. The demo removes what it created (endpoints, networks, namespaces)
when it ends, also on failure; ``run_demo`` returns 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from controller.desired import DesiredState
from controller.lab.capture import capturing, ipv4_from
from controller.lab.pinger import ping
from controller.lab.probes import forge_neighbour, wait_ping, wait_status
from controller.lab.topology import Lab
from controller.model.errors import HeddleError, NotFound
from controller.output import table

SUBNET = "10.10.0.0/24"
NETWORKS = {"blue": (4101, 10), "green": (4102, 20)}  # name: (vni, host part base)


@dataclass(frozen=True, slots=True)
class DemoEndpoint:
    network: str
    host: str
    netns: str
    ip: str
    mac: str


def _cleanup(lab: Lab, desired: DesiredState) -> None:
    for name in NETWORKS:
        with contextlib.suppress(NotFound):
            desired.remove_network(name, force=True)
    for name in NETWORKS:
        for h in lab.hosts:
            lab.remove_netns(f"{name[0]}{h.name[1:]}")


def run_demo(lab: Lab, out: TextIO = sys.stdout) -> int:
    """Run the demo on ``lab`` (>= 3 hosts, agents running). 0 if every check passed."""
    hosts = [h.name for h in lab.hosts][:3]
    if len(hosts) < 3:
        raise HeddleError("the demo needs a lab with at least 3 hosts")
    kv = lab.kv()
    desired = DesiredState(kv)
    probe = lab.etcd_http()
    try:
        _cleanup(lab, desired)  # leftovers of an interrupted earlier run
        eps: list[DemoEndpoint] = []
        t0 = time.monotonic()
        for net, (vni, base) in NETWORKS.items():
            desired.create_network(net, SUBNET, vni=vni)
            for k, host in enumerate(hosts, start=1):
                ns = lab.add_netns(f"{net[0]}{k}")
                ip = f"10.10.0.{base + k}"
                ep = desired.create_endpoint(net, host, netns=ns, ip=ip, endpoint_id=f"{net}-{k}")
                eps.append(DemoEndpoint(net, host, ns, ep.address, ep.mac))
        try:
            wait_status(probe, hosts, timeout=30.0)
        except TimeoutError as exc:
            logs = ", ".join(str(lab.agents.log(h)) for h in hosts)
            raise HeddleError(f"the agents did not converge: {exc} (logs: {logs})") from None
        pairs = [(a, b) for a in eps for b in eps if a.network == b.network and a.host != b.host]
        for a, b in pairs:
            if wait_ping(a.netns, b.ip, timeout=20.0) is None:
                break
        rev = probe.revision()
        out.write(f"converged in {time.monotonic() - t0:.2f} s (etcd revision {rev})\n\n")
        return _report(eps, pairs, out)
    finally:
        _cleanup(lab, desired)
        kv.close()


def _report(
    eps: list[DemoEndpoint], pairs: list[tuple[DemoEndpoint, DemoEndpoint]], out: TextIO
) -> int:
    failures = 0
    rows: list[list[object]] = []
    for a, b in pairs:
        res = ping(a.netns, b.ip, count=5, interval=0.02, wait=1.0)
        ok = res.ok
        failures += not ok
        avg = f"{res.avg_ms:.3f}" if res.avg_ms is not None else "-"
        rows.append(
            [
                a.network,
                f"{a.host} {a.ip}",
                f"{b.host} {b.ip}",
                f"{res.received}/{res.sent}",
                avg,
                "ok" if ok else "FAIL",
            ]
        )
    out.write("Reachability within each network (5 pings each)\n")
    out.write(table(["network", "from", "to", "replies", "avg rtt ms", "result"], rows) + "\n\n")

    rows = []
    checks = [
        (next(e for e in eps if e.network == "blue" and e.host == eps[0].host),
         next(e for e in eps if e.network == "green" and e.host != eps[0].host)),
        (next(e for e in eps if e.network == "green" and e.host == eps[-1].host),
         next(e for e in eps if e.network == "blue" and e.host != eps[-1].host)),
    ]  # fmt: skip
    for src, victim in checks:
        for method in ("plain", "forged ARP"):
            if method == "forged ARP":
                forge_neighbour(src.netns, victim.ip, victim.mac)
            with capturing("eth0", victim.netns, promisc=True) as cap:
                res = ping(src.netns, victim.ip, count=5, interval=0.02, wait=1.0)
                time.sleep(0.2)
            delta = ipv4_from(cap.frames, src.ip)
            ok = res.received == 0 and delta == 0
            failures += not ok
            rows.append(
                [
                    f"{src.network} {src.host} {src.ip}",
                    f"{victim.network} {victim.host} {victim.ip}",
                    method,
                    f"{res.received}/{res.sent}",
                    delta,
                    "isolated" if ok else "LEAK",
                ]
            )
    out.write("Isolation: same subnet, different networks (target address exists only there)\n")
    out.write(
        table(
            [
                "from",
                "to (other network)",
                "method",
                "replies",
                "frames from src at victim",
                "result",
            ],
            rows,
        )
        + "\n\n"
    )
    out.write("all checks passed\n" if failures == 0 else f"{failures} check(s) FAILED\n")
    return 0 if failures == 0 else 1

"""Observations of a running lab shared by the demo, the e2e tests and the benchmarks.

They read the kernel (pyroute2, ``flags=0`` so a typo never creates a namespace), etcd
(through ``EtcdHTTP``) and Open vSwitch (``ovs-vsctl``/``ovs-ofctl`` on the host's private
instance) -- never through the code under test -- and only ever write into namespaces
the caller created (e.g. a forged neighbour entry in a container).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pyroute2 import IPRoute

from controller.lab.etcd_http import EtcdHTTP, EtcdHTTPError
from controller.lab.nsutil import call_in_netns
from controller.lab.ovs import OvsInstance
from controller.lab.pinger import PingResult, ping
from controller.model.flow import parse_flows
from controller.model.naming import OWNER_ALIAS, PREFIX
from controller.store import keys
from controller.store.interest import newest_followed


def agent_metric(address: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with ``labels`` (among its own) that the agent serving
    metrics at ``address`` exports now; None when it exports none. Raises ``OSError`` when the
    agent does not answer."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@dataclass(frozen=True, slots=True)
class LinkInfo:
    name: str
    index: int
    kind: str | None
    alias: str | None
    mtu: int


def links(netns: str) -> list[LinkInfo]:
    """All links of ``netns``."""
    out: list[LinkInfo] = []
    with IPRoute(netns=netns, flags=0) as ipr:
        for msg in ipr.get_links():
            info = msg.get("IFLA_LINKINFO")
            kind = info.get("IFLA_INFO_KIND") if info is not None else None
            out.append(
                LinkInfo(
                    str(msg.get("IFLA_IFNAME")),
                    int(msg["index"]),
                    kind,
                    msg.get("IFLA_IFALIAS"),
                    int(msg.get("IFLA_MTU")),
                )
            )
    return out


def owned_links(netns: str) -> list[LinkInfo]:
    """Links heddle owns in ``netns``: named ``hd*`` or carrying the owner ifalias."""
    return [ln for ln in links(netns) if ln.name.startswith(PREFIX) or ln.alias == OWNER_ALIAS]


def rx_packets(netns: str, ifname: str = "eth0") -> int:
    """Received-packet counter of ``ifname`` in ``netns`` (0 if the link does not exist)."""
    with IPRoute(netns=netns, flags=0) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return 0
        msg = ipr.link("get", index=found[0])[0]
        stats = msg.get("IFLA_STATS64") or msg.get("IFLA_STATS")
        return int(stats["rx_packets"]) if stats is not None else 0


def forge_neighbour(netns: str, ip: str, mac: str, ifname: str = "eth0") -> None:
    """Install a permanent ARP entry ``ip -> mac`` in a container namespace we created."""
    with IPRoute(netns=netns, flags=0) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.neigh("replace", ifindex=idx, dst=ip, lladdr=mac, state="permanent")


def wait_ping(
    netns: str, dst: str, timeout: float = 30.0, count: int = 3, interval: float = 0.02
) -> PingResult | None:
    """Retry a short ping until it fully succeeds; the successful result, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = ping(netns, dst, count=count, interval=interval, wait=0.5)
        if res.ok:
            return res
        time.sleep(0.1)
    return None


def followed_revisions(probe: EtcdHTTP, hosts: Iterable[str]) -> dict[str, int]:
    """Per host, the newest revision among the records its agent follows (one listing)."""
    items, _ = probe.list(keys.ROOT)
    pairs = [(it.key, it.mod_revision) for it in items]
    return {h: newest_followed(pairs, h) for h in hosts}


def wait_status(
    probe: EtcdHTTP,
    hosts: Iterable[str],
    min_revision: int | Mapping[str, int] | None = None,
    timeout: float = 30.0,
) -> dict[str, dict[str, object]]:
    """Wait until every host's agent reports a pass at ``revision >= min_revision`` (one for
    all, or per host; None: what each host follows now, ``followed_revisions``).

    Returns the status records; raises ``TimeoutError`` naming the laggards.
    """
    pending = set(hosts)
    if min_revision is None:
        min_revision = followed_revisions(probe, pending)
    targets = (
        dict.fromkeys(pending, min_revision) if isinstance(min_revision, int) else min_revision
    )
    got: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for h in sorted(pending):
            with contextlib.suppress(EtcdHTTPError):
                st = probe.status_of(h)
                rev = st[0].get("revision") if st is not None else None
                if st is not None and isinstance(rev, int) and rev >= targets[h]:
                    got[h] = st[0]
                    pending.discard(h)
        if pending and time.monotonic() > deadline:
            want = {h: targets[h] for h in sorted(pending)}
            raise TimeoutError(f"no pass at the revision each follows on {want}")
        if pending:
            time.sleep(0.05)
    return got


# -- Open vSwitch (ovs hosts): through ovs-vsctl / ovs-ofctl, never through the code under test --

OVS_OWNER = ("heddle-owner", OWNER_ALIAS)
OVS_ENDPOINT_KEY = "heddle-endpoint"
OVS_COOKIE = "0x68646c65"  # "hdle": the cookie on every flow heddle installs


@dataclass(frozen=True, slots=True)
class OvsInterface:
    """One OVSDB ``Interface`` row: its row UUID (stable while the row is kept, so a row that
    was deleted and created again shows up as a new UUID) and its ``external_ids``."""

    uuid: str
    name: str
    external_ids: dict[str, str]


def ovs_owned_interfaces(inst: OvsInstance) -> dict[str, OvsInterface]:
    """``{interface name: row}`` of every interface heddle marked as its own."""
    out = json.loads(
        inst.vsctl("--format=json", "--columns=_uuid,name,external_ids", "list", "Interface")
    )
    found: dict[str, OvsInterface] = {}
    for uuid, name, ids in out["data"]:
        pairs = dict(ids[1]) if isinstance(ids, list) and ids[0] == "map" else {}
        if pairs.get(OVS_OWNER[0]) == OVS_OWNER[1]:
            row_id = str(uuid[1]) if isinstance(uuid, list) else str(uuid)
            ids_ = {str(k): str(v) for k, v in pairs.items()}
            found[str(name)] = OvsInterface(row_id, str(name), ids_)
    return found


def ovs_endpoint_ports(inst: OvsInstance) -> list[str]:
    """Owned interfaces that stand for an endpoint (``external_ids:heddle-endpoint``)."""
    rows = ovs_owned_interfaces(inst).values()
    return sorted(r.name for r in rows if OVS_ENDPOINT_KEY in r.external_ids)


def ovs_flows(inst: OvsInstance, bridge: str = "br-heddle") -> list[str]:
    """heddle's flows on ``bridge`` (by cookie) as ``ovs-ofctl dump-flows --no-stats`` lines."""
    text = inst.ofctl(
        "-O", "OpenFlow14", "--no-names", "dump-flows", "--no-stats", bridge,
        f"cookie={OVS_COOKIE}/-1",
    )  # fmt: skip
    return [ln.strip() for ln in text.splitlines() if "actions=" in ln]


_FLOW_STATS = re.compile(r"\b(duration|n_packets|n_bytes|idle_age|hard_age)=[^,\s]*,?\s*")


def ovs_nd_targets(inst: OvsInstance, vni: int, bridge: str = "br-heddle") -> set[str]:
    """The IPv6 addresses the ND responder of ``inst`` answers solicitations for in network
    ``vni`` (table 12 of ``controller/plan/flows.py``): the ovs backend's counterpart of the
    kernel backend's IPv6 neighbour entries."""
    text = inst.ofctl(
        "-O", "OpenFlow14", "--no-names", "dump-flows", bridge, f"table=12,cookie={OVS_COOKIE}/-1"
    )  # fmt: skip
    return {
        f.match_dict["nd_target"]
        for f in parse_flows(text)
        if f.match_dict.get("reg6") == str(vni) and "nd_target" in f.match_dict
    }


def ovs_flow_ages(inst: OvsInstance, bridge: str = "br-heddle") -> dict[str, float]:
    """``{flow without its counters: seconds since it was installed}`` of heddle's flows. A
    flow that was deleted and added again (or modified) is younger than the time since."""
    text = inst.ofctl(
        "-O", "OpenFlow14", "--no-names", "dump-flows", bridge, f"cookie={OVS_COOKIE}/-1"
    )  # fmt: skip
    ages: dict[str, float] = {}
    for line in text.splitlines():
        m = re.search(r"duration=([0-9.]+)s", line)
        if m is not None and "actions=" in line:
            ages[_FLOW_STATS.sub("", line.strip())] = float(m.group(1))
    return ages


def leftovers(prefix: str, workdir: Path) -> list[str]:
    """Every trace a lab with ``prefix`` in ``workdir`` could leave: namespaces and root-netns
    links named ``<prefix>-*``, live processes whose command line names ``workdir`` (etcd, OVS
    daemons, ovs agents) or that run in it (every lab child starts there), and ``workdir``
    itself. Empty when the lab is completely gone."""
    found = [f"netns {p.name}" for p in Path("/run/netns").glob(f"{prefix}-*")]
    with IPRoute() as ipr:
        names = [str(m.get("IFLA_IFNAME")) for m in ipr.get_links()]
    found += [f"link {n}" for n in names if n.startswith(f"{prefix}-")]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
        except OSError:
            continue
        inside = cwd == str(workdir) or cwd.startswith(f"{workdir}/")
        if (str(workdir) in cmd or inside) and int(pid) != os.getpid():
            found.append(f"process {pid}: {cmd.strip()}")
    if workdir.exists():
        found.append(f"directory {workdir}")
    return found


def tcp_transfer(
    src_netns: str, dst_netns: str, dst_ip: str, nbytes: int = 1 << 20, port: int = 5201,
    timeout: float = 10.0,
) -> float:  # fmt: skip
    """Send ``nbytes`` over one TCP connection from ``src_netns`` to ``dst_ip`` (in
    ``dst_netns``); return the seconds it took. Raises ``OSError``/``TimeoutError`` when the
    bytes do not all arrive in ``timeout`` (e.g. segments dropped for bad checksums: ICMP echo
    carries a checksum computed in software, TCP's may be left to an offload that never runs).

    Both sockets are made by threads inside the namespaces and used from here."""

    def listener() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((dst_ip, port))
        s.listen(1)
        return s

    srv = call_in_netns(dst_netns, listener)
    cli = call_in_netns(src_netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sender_error: list[BaseException] = []
    try:
        srv.settimeout(timeout)
        cli.settimeout(timeout)
        t0 = time.monotonic()
        cli.connect((dst_ip, port))
        conn, _ = srv.accept()
        data = os.urandom(nbytes)

        def send() -> None:
            try:
                cli.sendall(data)
                cli.shutdown(socket.SHUT_WR)
            except OSError as exc:
                sender_error.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        with conn:
            conn.settimeout(timeout)
            got = bytearray()
            deadline = t0 + timeout
            while len(got) < nbytes:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"TCP to {dst_ip}: {len(got)}/{nbytes} bytes in {timeout}s")
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
        sender.join(timeout)
        if bytes(got) != data:
            raise OSError(f"TCP to {dst_ip}: got {len(got)} of {nbytes} bytes (or corrupted)")
        if sender_error:
            raise sender_error[0]
        return time.monotonic() - t0
    finally:
        cli.close()
        srv.close()

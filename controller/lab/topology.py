"""The multi-host lab on one machine: hosts are network namespaces joined by bridges.

Topology (prefix ``hlab``, N hosts)::

  root netns:  hlab-mg  bridge, 172.31.254.254/24 (etcd listens here and on 127.0.0.1)
               hlab-ul  bridge, NO address, IPv6 off, multicast snooping off (the underlay)
  hlab-hK:     mgmt0 172.31.254.K/24 (veth to hlab-mg)   ul0 172.31.253.K/24 = VTEP (to hlab-ul)
               lo up, no default route, br_netfilter off, IPv6 off on mgmt0/ul0,
               one agent process: ``python -m controller agent --host hK --vtep ...``
                 (``controller/lab/agents.py``)
               ovs hosts also: a private ovsdb-server + ovs-vswitchd (``controller.lab.ovs``)

Why this shape: the underlay bridge has no address and the root netns never forwards, so data
plane traffic can only go host netns to host netns (and never leaves the lab); the management
bridge carries only etcd traffic, so a capture on the underlay bridge sees nothing but the data
plane. Container (endpoint) namespaces are ``<prefix>-<name>`` with IPv6 off, so the overlay
carries no IPv6 autoconfiguration chatter either.

Backends (``up(backend=...)``): ``kernel`` (every host), ``ovs`` (every host on Open vSwitch with
the userspace ``netdev`` datapath: there is no ``openvswitch.ko`` here) or ``mixed`` (h1 kernel,
the others ovs: both speak VXLAN on 4789 with the same VNI). An ovs host gets its own OVS
instance in ``<workdir>/ovs-hK``, started inside its namespace *before* its agent (the agent
builds br-heddle/br-phy through it and moves ``ul0`` and the VTEP address into br-phy), and an
agent with ``--backend ovs --ovsdb unix:<that dir>/db.sock --ovs-datapath netdev --underlay-dev
ul0``. In a mixed lab the kernel hosts get TX checksum offload off on ``ul0``: a veth hands
frames over with the checksum still to do, which the kernel receive path accepts but OVS's
userspace datapath (AF_PACKET) sees as corrupt and drops; a real NIC computes it (lab-only).

``Lab`` is the topology and its etcd; the links and namespaces themselves are made by
``controller/lab/wiring.py``, the record is kept by ``controller/lab/state.py``'s ``LabBook``.

Contract:
* ``up`` records each object before creating it (``controller.lab.state``) and calls ``down`` on
  any failure, so a failed ``up`` leaves nothing behind.
* ``down`` works from any process (it reads the record), stops processes only by recorded
  ``ProcRef``, deletes only recorded namespaces and links, removes the workdir; idempotent.
* ``down`` stops each recorded OVS instance by the PIDs in its pidfiles (``lab.ovs``) after the
  agents and before the namespaces go, so no daemon keeps a deleted namespace alive.
* ``status`` returns ``{"etcd": URL, "hosts": [{"name", "netns", "vtep", "backend",
  "agent_pid"}]}`` with ``agent_pid`` None when that agent is not running; ``backend`` is the
  host's own (``kernel`` or ``ovs``, also in a ``mixed`` lab).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyroute2 import netns as pnetns

from controller.dataplane.ovs_host import set_tx_checksum
from controller.lab import etcd_keeper, wiring
from controller.lab import ovs as lab_ovs
from controller.lab.agents import LabAgents
from controller.lab.etcd_http import EtcdHTTP
from controller.lab.nsutil import (
    LabError,
    call_in_netns,
    child_ref,
    is_running,
    netns_exists,
    popen_in_netns,
    proc_ref,
    send_signal,
    stop_process,
    write_sysctls,
)
from controller.lab.secure import LabIdentities, secure_etcd
from controller.lab.state import HostRecord, LabBook, LabRecord
from controller.lab.wiring import HOST_SYSCTLS, UNDERLAY_DEV, Wire
from controller.store.access import OPERATOR_USER, ROOT_USER
from controller.store.etcd import EtcdKV, TLSFiles
from controller.store.upgrade import upgrade as upgrade_store

DEFAULT_WORKDIR = Path("/run/heddle-lab")
DEFAULT_MGMT_SUBNET = "172.31.254.0/24"
DEFAULT_UNDERLAY_SUBNET = "172.31.253.0/24"
DEFAULT_UNDERLAY_SUBNET6 = "fd00:172:31:253::/64"  # ``heddle lab up --underlay ipv6``
BACKENDS = ("kernel", "ovs", "mixed")
ETCD_READY_TIMEOUT = 30.0

_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,8}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")

# ovs hosts: the bridges' devices (br-phy carries the VTEP) are created by ovs-vswitchd after
# ``up``; they must come up without IPv6 too, or router solicitations reach the underlay.
OVS_HOST_SYSCTLS = {
    "net/ipv6/conf/all/disable_ipv6": 1,
    "net/ipv6/conf/default/disable_ipv6": 1,
}


def default_workdir() -> Path:
    """``$HEDDLE_LAB_DIR`` or ``/run/heddle-lab``."""
    return Path(os.environ.get("HEDDLE_LAB_DIR") or DEFAULT_WORKDIR)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, bridges, veth pairs)")


def host_backends(backend: str, names: Sequence[str]) -> dict[str, str]:
    """Each host's own backend for a lab ``backend``: ``mixed`` puts the first host on
    ``kernel`` and the others on ``ovs``. Raises ``LabError`` for an unknown lab backend."""
    if backend not in BACKENDS:
        raise LabError(f"backend {backend!r} is not supported by the lab (use: kernel, ovs, mixed)")
    if backend == "mixed":
        return {n: "kernel" if i == 0 else "ovs" for i, n in enumerate(names)}
    return {n: backend for n in names}


def _check_name(name: str, full: str) -> None:
    if not _NAME.match(name) or len(full) > 15:
        raise LabError(f"netns name {full!r}: use a-z0-9- and at most 15 characters")


class Lab:
    """A handle on the lab recorded in ``workdir`` (which may or may not be up): its topology
    and etcd; its agents are ``agents`` (``controller/lab/agents.py``).

    Several ``Lab`` objects (in several processes) may refer to one lab; the record on disk is
    the truth (``book``). Not thread-safe.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        prefix: str = "hlab",
        mgmt_subnet: str = DEFAULT_MGMT_SUBNET,
        underlay_subnet: str = DEFAULT_UNDERLAY_SUBNET,
    ) -> None:
        self.workdir = Path(workdir) if workdir is not None else default_workdir()
        self.book = LabBook(self.workdir)
        rec = self.book.load()
        if rec is not None:
            prefix, mgmt_subnet, underlay_subnet = rec.prefix, rec.mgmt_subnet, rec.underlay_subnet
        if not _PREFIX.match(prefix):
            raise LabError(f"lab prefix {prefix!r}: use 1-9 characters a-z0-9, starting with a-z")
        self.prefix = prefix
        self.mgmt_subnet = ipaddress.IPv4Network(mgmt_subnet)
        # IPv4 or IPv6: the VTEPs' family (an IPv6 underlay: VXLAN over IPv6).
        self.underlay_subnet: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.ip_network(
            underlay_subnet
        )
        self.agents = LabAgents(self)
        self._keeper: subprocess.Popen[bytes] | None = None

    # -- record -------------------------------------------------------------------------------
    @property
    def record(self) -> LabRecord:
        """The lab's record; raises ``LabError`` when no lab is up."""
        return self.book.record

    @property
    def is_up(self) -> bool:
        return self.book.load() is not None

    @property
    def etcd_url(self) -> str:
        url = self.record.etcd_url
        if url is None:
            raise LabError("the lab's etcd is not running")
        return url

    @property
    def hosts(self) -> tuple[HostRecord, ...]:
        return self.record.hosts

    def host(self, name: str) -> HostRecord:
        return self.record.host(name)

    def etcd_http(self, timeout: float = 2.0) -> EtcdHTTP:
        """A probe client on the etcd URL (independent of the code under test); on a secure
        lab it presents the operator's certificate and logs in as etcd's root."""
        if not self.record.secure:
            return EtcdHTTP(self.etcd_url, timeout=timeout)
        ids = LabIdentities.of(self.workdir)
        return EtcdHTTP(self.etcd_url, timeout, ids.probe_context(), (ROOT_USER, ids.root_password))

    def identity(self, name: str = OPERATOR_USER) -> TLSFiles | None:
        """TLS files of identity ``name`` (a host or the operator) on a secure lab, else None."""
        return LabIdentities.of(self.workdir).files(name) if self.record.secure else None

    def cli_flags(self, name: str = OPERATOR_USER) -> list[str]:
        """``heddle`` global flags for the lab's etcd as identity ``name``: ``--etcd`` and, on a
        secure lab, the TLS files."""
        ids = LabIdentities.of(self.workdir)
        return ["--etcd", self.etcd_url, *(ids.flags(name) if self.record.secure else [])]

    def kv(self, name: str = OPERATOR_USER) -> EtcdKV:
        """A store client on the lab's etcd as identity ``name`` (the operator by default)."""
        return EtcdKV([self.etcd_url], self.identity(name))

    @property
    def mgmt_bridge(self) -> str:
        return f"{self.prefix}-mg"

    @property
    def underlay_bridge(self) -> str:
        return f"{self.prefix}-ul"

    def _mgmt_ip(self, k: int) -> str:
        return str(self.mgmt_subnet.network_address + k)

    def _vtep(self, k: int) -> str:
        return str(self.underlay_subnet.network_address + k)

    @property
    def etcd_ip(self) -> str:
        return str(self.mgmt_subnet.broadcast_address - 1)

    # -- up -----------------------------------------------------------------------------------
    def up(
        self,
        hosts: int = 3,
        backend: str = "kernel",
        agents: bool = True,
        resync_interval: float | None = None,
        agent_args: Sequence[str] = (),
        wait: bool = True,
        secure: bool = False,
    ) -> Lab:
        """Build the lab (see the module docstring); on any failure tear down and re-raise.

        ``backend``: ``kernel``, ``ovs`` or ``mixed`` (``host_backends``). ``agents=False``
        builds everything (OVS instances included) but starts no agent (for lab self-tests).
        ``wait`` waits until every agent has written its first status record. ``secure``:
        etcd with TLS client certificates and authentication, one identity per host
        (``controller/lab/secure.py``).
        """
        _require_root()
        if not 1 <= hosts <= min(99, self.mgmt_subnet.num_addresses - 3):
            raise LabError(f"hosts must be in 1..99, got {hosts}")
        names = [f"h{k}" for k in range(1, hosts + 1)]
        backends = host_backends(backend, names)
        if self.is_up:
            raise LabError(
                f"a lab is already recorded in {self.workdir}; run `heddle lab down` first"
            )
        self._check_free(names)
        args = list(agent_args)
        if resync_interval is not None:
            args += ["--resync-interval", str(resync_interval)]
        self.book.save(
            LabRecord(
                prefix=self.prefix,
                mgmt_subnet=str(self.mgmt_subnet),
                underlay_subnet=str(self.underlay_subnet),
                agent_args=tuple(args),
                secure=secure,
            )
        )
        try:
            self._make_bridges()
            for k, name in enumerate(names, start=1):
                self._make_host(k, name, backends[name])
                if backends[name] == "ovs":
                    self._start_ovs(name)
                elif "ovs" in backends.values():
                    set_tx_checksum(self.netns_name(name), UNDERLAY_DEV, on=False)
            ids = LabIdentities.issue(self.workdir, self.etcd_ip, names) if secure else None
            self._start_etcd(ids)
            if ids is not None:
                secure_etcd(self.etcd_url, ids, names)
            self._check_mgmt()
            with self.kv() as kv:  # a new store: every writer indexes placement (README: schema)
                upgrade_store(kv)
            if agents:
                for name in names:
                    self.agents.start(name, wait=False)
                if wait:
                    for name in names:
                        self.agents.wait_ready(name)
        except BaseException:
            self.down()
            raise
        return self

    def _check_free(self, names: Sequence[str]) -> None:
        """Refuse to start if any name the lab would create already exists (not ours to touch)."""
        taken = [f"netns {self.prefix}-{n}" for n in names if netns_exists(f"{self.prefix}-{n}")]
        links = [self.mgmt_bridge, self.underlay_bridge]
        links += [f"{self.prefix}-{n}{s}" for n in names for s in ("m", "u")]
        taken += [f"link {ln}" for ln in links if wiring.root_link_exists(ln)]
        if taken:
            raise LabError(
                f"cannot build lab {self.prefix!r}: {', '.join(taken)} already exist "
                "(another lab with this prefix? `heddle lab down`, or choose another prefix)"
            )

    def _make_bridges(self) -> None:
        for name, address in ((self.mgmt_bridge, self.etcd_ip), (self.underlay_bridge, None)):
            self.book.add_link(name, bridge=True)
            wiring.make_bridge(name, address, self.mgmt_subnet.prefixlen)

    def _make_host(self, k: int, name: str, backend: str) -> None:
        ns = self.netns_name(name)
        self.book.add_netns(ns)
        pnetns.create(ns)
        write_sysctls(ns, {k_: v for k_, v in HOST_SYSCTLS.items() if "conf/" not in k_})
        wires = [
            Wire(f"{ns}m", "mgmt0", self.mgmt_bridge, self._mgmt_ip(k), self.mgmt_subnet.prefixlen),
            Wire(f"{ns}u", UNDERLAY_DEV, self.underlay_bridge, self._vtep(k),
                 self.underlay_subnet.prefixlen),
        ]  # fmt: skip
        for w in wires:
            self.book.add_link(w.root_end)
        conf = {k_: v for k_, v in HOST_SYSCTLS.items() if "conf/" in k_}
        wiring.wire_netns(ns, wires, conf, self.underlay_subnet.version == 6)
        self.book.add_host(HostRecord(name, ns, self._vtep(k), self._mgmt_ip(k), backend))

    def _start_ovs(self, name: str) -> None:
        """Record, then start, the private OVS instance of ovs host ``name`` in its netns."""
        sysctls = OVS_HOST_SYSCTLS
        if self.underlay_subnet.version == 6:  # "all" would take the VTEP off ul0 too
            sysctls = {k: v for k, v in sysctls.items() if "/all/" not in k}
        write_sysctls(self.netns_name(name), sysctls)
        workdir = self.workdir / f"ovs-{name}"
        self.book.set_host(name, ovs_dir=str(workdir))
        lab_ovs.start(self.host(name).netns, workdir)

    def ovs(self, host: str) -> lab_ovs.OvsInstance:
        """The OVS instance of ovs host ``host`` (for ``ovs-vsctl``/``ovs-ofctl`` probes and
        ovs-vswitchd restarts). Raises ``LabError`` for a kernel host."""
        h = self.host(host)
        if h.ovs_dir is None:
            raise LabError(f"host {host} runs the {h.backend} backend: it has no OVS instance")
        return lab_ovs.OvsInstance(h.netns, Path(h.ovs_dir))

    def _start_etcd(self, ids: LabIdentities | None = None) -> None:
        """Record, then start, the keeper of the lab's etcd; record etcd once it is healthy."""
        tls_dir = ids.server_dir() if ids is not None else None
        self._keeper = etcd_keeper.spawn(self.workdir, self.etcd_ip, tls_dir)
        self.book.save(replace(self.record, etcd_keeper=child_ref(self._keeper)))
        pid, url = etcd_keeper.await_ready(self._keeper, self.workdir, ETCD_READY_TIMEOUT)
        self.book.save(replace(self.record, etcd=proc_ref(pid), etcd_url=url))

    def _check_mgmt(self) -> None:
        """Every host reaches etcd over its mgmt0 (and only so: hosts have no default route)."""
        url = self.etcd_url
        port = int(url.rsplit(":", 1)[1])

        def connect() -> None:
            socket.create_connection((self.etcd_ip, port), timeout=3.0).close()

        for h in self.hosts:
            try:
                call_in_netns(h.netns, connect)
            except OSError as exc:
                raise LabError(f"host {h.name} cannot reach etcd at {url}: {exc}") from None

    # -- etcd faults --------------------------------------------------------------------------
    def freeze_etcd(self) -> None:
        """SIGSTOP etcd: connections stay open but nothing answers (a silent partition)."""
        ref = self.record.etcd
        if ref is None or not send_signal(ref, signal.SIGSTOP):
            raise LabError("etcd is not running")

    def thaw_etcd(self) -> None:
        ref = self.record.etcd
        if ref is None or not send_signal(ref, signal.SIGCONT):
            raise LabError("etcd is not running")

    # -- container namespaces -----------------------------------------------------------------
    def netns_name(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def add_netns(self, name: str) -> str:
        """Create the endpoint namespace ``<prefix>-<name>`` (lo up, IPv6 off); return its name.

        The name must fit an endpoint record's ``netns`` field (<= 15 characters).
        """
        full = self.netns_name(name)
        _check_name(name, full)
        if netns_exists(full):
            raise LabError(f"netns {full} exists already")
        self.book.add_netns(full)
        wiring.make_endpoint_netns(full)
        return full

    def remove_netns(self, name: str) -> None:
        """Delete a namespace made by ``add_netns`` (by short or full name). Idempotent."""
        full = name if name.startswith(f"{self.prefix}-") else self.netns_name(name)
        if netns_exists(full):
            pnetns.remove(full)
        self.book.drop_netns(full)

    def add_outsider(self, name: str, k: int = 200) -> tuple[str, str]:
        """A namespace ``<prefix>-<name>`` on the underlay that is no lab host: ``ul0`` with
        address ``underlay_subnet + k`` and nothing else (no agent, no etcd). Returns (netns,
        address). For attacks: it can reach every VTEP, as anything on a shared segment can."""
        ns = self.netns_name(name)
        _check_name(name, ns)
        address = str(self.underlay_subnet.network_address + k)
        wire = Wire(ns[:15], UNDERLAY_DEV, self.underlay_bridge, address,
                    self.underlay_subnet.prefixlen)  # fmt: skip
        self.book.add_netns(ns)
        pnetns.create(ns)
        self.book.add_link(wire.root_end)
        wiring.wire_netns(ns, [wire], {}, self.underlay_subnet.version == 6)
        # As on the kernel hosts of a mixed lab: OVS's userspace datapath would drop the
        # veth's checksum-offloaded packets as corrupt before any flow sees them.
        set_tx_checksum(ns, UNDERLAY_DEV, on=False)
        return ns, address

    # -- helper processes ---------------------------------------------------------------------
    def popen(
        self, netns: str | None, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        """Start a helper (pinger, iperf3, ...) in ``netns``; ``down`` stops it if still running."""
        proc = popen_in_netns(netns, argv, **kwargs)
        self.book.add_proc(child_ref(proc))
        return proc

    # -- status / down ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        rec = self.record
        return {
            "etcd": rec.etcd_url,
            **({"secure": True, "operator_flags": self.cli_flags()[2:]} if rec.secure else {}),
            "hosts": [
                {
                    "name": h.name,
                    "netns": h.netns,
                    "vtep": h.vtep,
                    "backend": h.backend,
                    "metrics": self.agents.metrics_address(h.name),
                    "agent_pid": h.agent.pid
                    if h.agent is not None and is_running(h.agent)
                    else None,
                }
                for h in rec.hosts
            ],
        }

    def down(self) -> None:
        """Remove every recorded trace of the lab. Idempotent; best effort on each object."""
        rec = self.book.load()
        if rec is None:
            with contextlib.suppress(OSError):
                self.workdir.rmdir()  # only if empty: we never delete what we did not record
            return
        problems: list[str] = []
        for ref in (*rec.procs, *(h.agent for h in rec.hosts)):
            stop_process(ref)
        for h in rec.hosts:  # after the agents (they would react), before the namespaces
            if h.ovs_dir is not None:
                problems += lab_ovs.stop_workdir(Path(h.ovs_dir))
        stop_process(rec.etcd_keeper, timeout=15.0)  # the keeper stops etcd cleanly
        stop_process(rec.etcd)
        self.agents.reap()
        if self._keeper is not None and self._keeper.poll() is not None:
            self._keeper = None
        wiring.delete_links(rec.root_links)
        for ns in reversed(rec.netns):
            try:
                if netns_exists(ns):
                    pnetns.remove(ns)
            except OSError as exc:
                problems.append(f"netns {ns}: {exc}")
        wiring.delete_links(rec.bridges)
        problems += [f"link {n} still exists"
                     for n in wiring.links_left((*rec.bridges, *rec.root_links))]  # fmt: skip
        if problems:
            raise LabError("lab down incomplete: " + "; ".join(problems))
        shutil.rmtree(self.workdir, ignore_errors=True)


def up(
    hosts: int = 3,
    backend: str = "kernel",
    workdir: Path | None = None,
    prefix: str = "hlab",
    **kwargs: Any,
) -> Lab:
    """Build a lab and return its handle (see ``Lab.up`` for the keyword arguments)."""
    return Lab(workdir, prefix=prefix).up(hosts=hosts, backend=backend, **kwargs)


def down(workdir: Path | None = None) -> None:
    Lab(workdir).down()


def status(workdir: Path | None = None) -> dict[str, Any]:
    return Lab(workdir).status()

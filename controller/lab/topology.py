"""The multi-host lab on one machine: hosts are network namespaces joined by bridges.

Topology (prefix ``hlab``, N hosts)::

  root netns:  hlab-mg  bridge, 172.31.254.254/24 (etcd listens here and on 127.0.0.1)
               hlab-ul  bridge, NO address, IPv6 off, multicast snooping off (the underlay)
  hlab-hK:     mgmt0 172.31.254.K/24 (veth to hlab-mg)   ul0 172.31.253.K/24 = VTEP (to hlab-ul)
               lo up, no default route, br_netfilter off, IPv6 off on mgmt0/ul0,
               one agent process: ``python -m controller agent --host hK --vtep ...``
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
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pnetns
from pyroute2.netlink.exceptions import NetlinkError

from controller.dataplane.ovs_host import set_tx_checksum
from controller.lab import ovs as lab_ovs
from controller.lab import state as lab_state
from controller.lab.etcd_http import EtcdHTTP, EtcdHTTPError
from controller.lab.nsutil import (
    LabError,
    ProcRef,
    call_in_netns,
    is_running,
    kill_process,
    netns_exists,
    popen_in_netns,
    proc_ref,
    send_signal,
    stop_process,
    write_sysctls,
)
from controller.lab.secure import LabIdentities, secure_etcd
from controller.lab.state import HostRecord, LabRecord
from controller.store.access import OPERATOR_USER, ROOT_USER
from controller.store.etcd import EtcdKV, TLSFiles
from controller.store.upgrade import upgrade as upgrade_store

DEFAULT_WORKDIR = Path("/run/heddle-lab")
DEFAULT_MGMT_SUBNET = "172.31.254.0/24"
DEFAULT_UNDERLAY_SUBNET = "172.31.253.0/24"
DEFAULT_UNDERLAY_SUBNET6 = "fd00:172:31:253::/64"  # ``heddle lab up --underlay ipv6``
BACKENDS = ("kernel", "ovs", "mixed")
OVS_DATAPATH = "netdev"  # no openvswitch.ko on lab machines (docs/platform.md O3)
UNDERLAY_DEV = "ul0"
AGENT_READY_TIMEOUT = 30.0
METRICS_PORT = 9101  # each agent on its own mgmt0 address
ETCD_READY_TIMEOUT = 30.0

_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,8}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_REPO_ROOT = Path(__file__).resolve().parents[2]

HOST_SYSCTLS = {
    "net/bridge/bridge-nf-call-iptables": 0,
    "net/bridge/bridge-nf-call-ip6tables": 0,
    "net/bridge/bridge-nf-call-arptables": 0,
    "net/ipv6/conf/mgmt0/disable_ipv6": 1,
    "net/ipv6/conf/ul0/disable_ipv6": 1,
}
# ovs hosts: the bridges' devices (br-phy carries the VTEP) are created by ovs-vswitchd after
# ``up``; they must come up without IPv6 too, or router solicitations reach the underlay.
OVS_HOST_SYSCTLS = {
    "net/ipv6/conf/all/disable_ipv6": 1,
    "net/ipv6/conf/default/disable_ipv6": 1,
}
CONTAINER_SYSCTLS = {
    "net/ipv6/conf/all/disable_ipv6": 1,
    "net/ipv6/conf/default/disable_ipv6": 1,
}


def default_workdir() -> Path:
    """``$HEDDLE_LAB_DIR`` or ``/run/heddle-lab``."""
    return Path(os.environ.get("HEDDLE_LAB_DIR") or DEFAULT_WORKDIR)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, bridges, veth pairs)")


def _link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _root_link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return _link_index(ipr, name) is not None


def child_env() -> dict[str, str]:
    """Environment for lab children: the checkout first on ``PYTHONPATH``, unbuffered output."""
    env = dict(os.environ)
    paths = [str(_REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def host_backends(backend: str, names: Sequence[str]) -> dict[str, str]:
    """Each host's own backend for a lab ``backend``: ``mixed`` puts the first host on
    ``kernel`` and the others on ``ovs``. Raises ``LabError`` for an unknown lab backend."""
    if backend not in BACKENDS:
        raise LabError(f"backend {backend!r} is not supported by the lab (use: kernel, ovs, mixed)")
    if backend == "mixed":
        return {n: "kernel" if i == 0 else "ovs" for i, n in enumerate(names)}
    return {n: backend for n in names}


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Lab:
    """A handle on the lab recorded in ``workdir`` (which may or may not be up).

    Several ``Lab`` objects (in several processes) may refer to one lab; the record on disk is
    the truth. Not thread-safe.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        prefix: str = "hlab",
        mgmt_subnet: str = DEFAULT_MGMT_SUBNET,
        underlay_subnet: str = DEFAULT_UNDERLAY_SUBNET,
    ) -> None:
        self.workdir = Path(workdir) if workdir is not None else default_workdir()
        rec = lab_state.load(self.workdir)
        if rec is not None:
            prefix, mgmt_subnet, underlay_subnet = rec.prefix, rec.mgmt_subnet, rec.underlay_subnet
        if not _PREFIX.match(prefix):
            raise LabError(f"lab prefix {prefix!r}: use 1-9 characters a-z0-9, starting with a-z")
        self.prefix = prefix
        self.mgmt_subnet = ipaddress.IPv4Network(mgmt_subnet)
        # Agents (re)started by this object serve --metrics on their mgmt0 address; a benchmark
        # comparing with and without metrics turns it off before restarting them.
        self.serve_metrics = True
        self.extra_agent_args: tuple[str, ...] = ()  # likewise, e.g. ("--no-filters",)
        # IPv4 or IPv6: the VTEPs' family (an IPv6 underlay: VXLAN over IPv6).
        self.underlay_subnet: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.ip_network(
            underlay_subnet
        )
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- record -------------------------------------------------------------------------------
    @property
    def record(self) -> LabRecord:
        rec = lab_state.load(self.workdir)
        if rec is None:
            raise LabError(f"no lab is up (no record in {self.workdir}); run `heddle lab up`")
        return rec

    def _save(self, rec: LabRecord) -> LabRecord:
        lab_state.save(self.workdir, rec)
        return rec

    @property
    def is_up(self) -> bool:
        return lab_state.load(self.workdir) is not None

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
        self._save(
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
                    self.start_agent(name, wait=False)
                if wait:
                    for name in names:
                        self.wait_agent_ready(name)
        except BaseException:
            self.down()
            raise
        return self

    def _check_free(self, names: Sequence[str]) -> None:
        """Refuse to start if any name the lab would create already exists (not ours to touch)."""
        taken = [f"netns {self.prefix}-{n}" for n in names if netns_exists(f"{self.prefix}-{n}")]
        links = [self.mgmt_bridge, self.underlay_bridge]
        links += [f"{self.prefix}-{n}{s}" for n in names for s in ("m", "u")]
        taken += [f"link {ln}" for ln in links if _root_link_exists(ln)]
        if taken:
            raise LabError(
                f"cannot build lab {self.prefix!r}: {', '.join(taken)} already exist "
                "(another lab with this prefix? `heddle lab down`, or choose another prefix)"
            )

    def _record_link(self, name: str, bridge: bool = False) -> None:
        rec = self.record
        if bridge:
            self._save(replace(rec, bridges=(*rec.bridges, name)))
        else:
            self._save(replace(rec, root_links=(*rec.root_links, name)))

    def _record_netns(self, name: str) -> None:
        rec = self.record
        if name not in rec.netns:
            self._save(replace(rec, netns=(*rec.netns, name)))

    def _make_bridges(self) -> None:
        for name, address in ((self.mgmt_bridge, self.etcd_ip), (self.underlay_bridge, None)):
            self._record_link(name, bridge=True)
            with IPRoute() as ipr:
                ipr.link("add", ifname=name, kind="bridge", br_mcast_snooping=0)
                write_sysctls(None, {f"net/ipv6/conf/{name}/disable_ipv6": 1})
                idx = _link_index(ipr, name)
                assert idx is not None
                if address is not None:
                    ipr.addr(
                        "add", index=idx, address=address, prefixlen=self.mgmt_subnet.prefixlen
                    )
                ipr.link("set", index=idx, state="up")

    def _make_host(self, k: int, name: str, backend: str) -> None:
        ns = f"{self.prefix}-{name}"
        self._record_netns(ns)
        pnetns.create(ns)
        write_sysctls(ns, {k_: v for k_, v in HOST_SYSCTLS.items() if "conf/" not in k_})
        mgmt = (f"{self.prefix}-{name}m", "mgmt0", self.mgmt_bridge, self._mgmt_ip(k))
        ul = (f"{self.prefix}-{name}u", "ul0", self.underlay_bridge, self._vtep(k))
        plan = ((*mgmt, self.mgmt_subnet), (*ul, self.underlay_subnet))
        for root_end, inner, bridge, _, _ in plan:
            self._record_link(root_end)
            with IPRoute() as ipr:
                ipr.link(
                    "add", ifname=root_end, kind="veth", peer={"ifname": inner, "net_ns_fd": ns}
                )
                write_sysctls(None, {f"net/ipv6/conf/{root_end}/disable_ipv6": 1})
                idx, br = _link_index(ipr, root_end), _link_index(ipr, bridge)
                ipr.link("set", index=idx, master=br, state="up")
        write_sysctls(ns, {k_: v for k_, v in HOST_SYSCTLS.items() if "conf/" in k_})
        self._ipv6_underlay(ns)
        with IPRoute(netns=ns, flags=0) as h:
            h.link("set", index=_link_index(h, "lo"), state="up")
            for _, inner, _, address, subnet in plan:
                idx = _link_index(h, inner)
                _add_address(h, idx, address, subnet.prefixlen)
                h.link("set", index=idx, state="up")
        rec = self.record
        host = HostRecord(name, ns, self._vtep(k), self._mgmt_ip(k), backend)
        self._save(replace(rec, hosts=(*rec.hosts, host)))

    def _ipv6_underlay(self, ns: str) -> None:
        """On an IPv6 underlay, IPv6 on ``ul0`` of ``ns`` -- its VTEP address only: no
        link-local address of the kernel's making, so no router solicitation or MLD report
        reaches the underlay (neighbour discovery between VTEPs is the underlay's own)."""
        if self.underlay_subnet.version == 6:
            write_sysctls(ns, {f"net/ipv6/conf/{UNDERLAY_DEV}/addr_gen_mode": 1,
                               f"net/ipv6/conf/{UNDERLAY_DEV}/disable_ipv6": 0})  # fmt: skip

    def _start_ovs(self, name: str) -> None:
        """Record, then start, the private OVS instance of ovs host ``name`` in its netns."""
        sysctls = OVS_HOST_SYSCTLS
        if self.underlay_subnet.version == 6:  # "all" would take the VTEP off ul0 too
            sysctls = {k: v for k, v in sysctls.items() if "/all/" not in k}
        write_sysctls(self.netns_name(name), sysctls)
        workdir = self.workdir / f"ovs-{name}"
        rec = self.record
        hosts = tuple(replace(h, ovs_dir=str(workdir)) if h.name == name else h for h in rec.hosts)
        self._save(replace(rec, hosts=hosts))
        lab_ovs.start(self.host(name).netns, workdir)

    def ovs(self, host: str) -> lab_ovs.OvsInstance:
        """The OVS instance of ovs host ``host`` (for ``ovs-vsctl``/``ovs-ofctl`` probes and
        ovs-vswitchd restarts). Raises ``LabError`` for a kernel host."""
        h = self.host(host)
        if h.ovs_dir is None:
            raise LabError(f"host {host} runs the {h.backend} backend: it has no OVS instance")
        return lab_ovs.OvsInstance(h.netns, Path(h.ovs_dir))

    def _start_etcd(self, ids: LabIdentities | None = None) -> None:
        ready = self.workdir / "etcd.ready"
        ready.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "controller.lab.etcd_keeper",
            "--data-dir", str(self.workdir / "etcd"), "--host", self.etcd_ip,
            "--ready-file", str(ready), "--also-listen", "127.0.0.1",
            *(["--tls-dir", ids.server_dir()] if ids is not None else []),
        ]  # fmt: skip
        log_path = self.workdir / "etcd-keeper.log"
        with open(log_path, "ab") as log:
            proc = popen_in_netns(
                None, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=child_env(), cwd=self.workdir,
            )  # fmt: skip
        self._children[proc.pid] = proc
        keeper = self._ref_of(proc)
        self._save(replace(self.record, etcd_keeper=keeper))
        deadline = time.monotonic() + ETCD_READY_TIMEOUT
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"etcd did not start:\n{log_tail(log_path)}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        if "error" in info:
            raise LabError(f"etcd did not start: {info['error']}")
        etcd = proc_ref(int(info["pid"]))
        self._save(replace(self.record, etcd=etcd, etcd_url=str(info["url"])))

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

    @staticmethod
    def _ref_of(proc: subprocess.Popen[bytes]) -> ProcRef:
        try:
            return proc_ref(proc.pid)
        except LabError:  # exited already; a start time no live process can have
            return ProcRef(proc.pid, -1)

    # -- agents -------------------------------------------------------------------------------
    def agent_argv(self, host: str) -> list[str]:
        """The agent's command line; an ovs host's agent is pointed at its own OVS instance."""
        h = self.host(host)
        ovs: list[str] = []
        if h.backend == "ovs":
            ovs = ["--ovsdb", self.ovs(host).db_url, "--ovs-datapath", OVS_DATAPATH,
                   "--underlay-dev", UNDERLAY_DEV]  # fmt: skip
        return [
            sys.executable, "-m", "controller", *self.cli_flags(h.name), "agent",
            "--host", h.name, "--vtep", h.vtep,
            "--backend", h.backend, *ovs, "--no-plugin", "--cni-socket", str(self.cni_socket(host)),
            *(["--metrics", self.metrics_address(host)] if self.serve_metrics else []),
            *self.record.agent_args, *self.extra_agent_args,
        ]  # fmt: skip

    def cni_socket(self, host: str) -> Path:
        """Where the agent of ``host`` serves ``heddle-cni`` (a CNI configuration names it)."""
        return self.workdir / f"{host}.cni.sock"

    def metrics_address(self, host: str) -> str:
        """Where the agent of ``host`` serves metrics, health and diagnostics: its management
        address (reachable from the root namespace, where Prometheus and the CLI run)."""
        return f"{self.host(host).mgmt_ip}:{METRICS_PORT}"

    def agent_log(self, host: str) -> Path:
        return self.workdir / f"{host}.log"

    def agent_running(self, host: str) -> bool:
        ref = self.host(host).agent
        return ref is not None and is_running(ref)

    def _set_agent(self, host: str, ref: ProcRef | None) -> None:
        rec = self.record
        hosts = tuple(replace(h, agent=ref) if h.name == host else h for h in rec.hosts)
        self._save(replace(rec, hosts=hosts))

    def start_agent(self, host: str, wait: bool = True) -> int:
        """Start the agent of ``host`` inside its netns (no-op if running); returns its PID.

        The agent gets its own session so it outlives the CLI process that ran ``lab up``.
        With ``wait``, returns after the agent wrote a status record (its first pass).
        """
        h = self.host(host)
        if h.agent is not None and is_running(h.agent):
            return h.agent.pid
        since = self._revision_or_zero()
        with open(self.agent_log(host), "ab") as log:
            log.write(f"--- lab: starting agent at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            proc = popen_in_netns(
                h.netns, self.agent_argv(host), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, env=child_env(),
                cwd=self.workdir,
            )  # fmt: skip
        self._children[proc.pid] = proc
        self._set_agent(host, self._ref_of(proc))
        if wait:
            self.wait_agent_ready(host, since_revision=since)
        return proc.pid

    def _revision_or_zero(self) -> int:
        try:
            return self.etcd_http().revision()
        except EtcdHTTPError:
            return 0

    def wait_agent_ready(
        self, host: str, timeout: float = AGENT_READY_TIMEOUT, since_revision: int = 0
    ) -> dict[str, Any]:
        """Wait until ``host``'s agent wrote its status after ``since_revision``; return it."""
        ref = self.host(host).agent
        deadline = time.monotonic() + timeout
        probe = self.etcd_http()
        while True:
            if ref is None or not is_running(ref):
                raise LabError(f"agent {host} is not running:\n{log_tail(self.agent_log(host))}")
            with contextlib.suppress(EtcdHTTPError):
                got = probe.status_of(host)
                if got is not None and got[1] > since_revision:
                    return got[0]
            if time.monotonic() > deadline:
                raise LabError(
                    f"agent {host} wrote no status within {timeout}s:\n"
                    f"{log_tail(self.agent_log(host))}"
                )
            time.sleep(0.05)

    def kill_agent(self, host: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the agent of ``host`` by its recorded PID; wait for it to exit."""
        ref = self.host(host).agent
        kill_process(ref, sig)
        self._reap_children()
        if ref is not None and not is_running(ref):
            self._set_agent(host, None)

    def stop_agent(self, host: str) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        stop_process(self.host(host).agent)
        self._reap_children()
        self._set_agent(host, None)

    def restart_agent(self, host: str, wait: bool = True) -> int:
        self.stop_agent(host)
        return self.start_agent(host, wait=wait)

    def _reap_children(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

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
        if not _NAME.match(name) or len(full) > 15:
            raise LabError(f"netns name {full!r}: use a-z0-9- and at most 15 characters")
        if netns_exists(full):
            raise LabError(f"netns {full} exists already")
        self._record_netns(full)
        pnetns.create(full)
        write_sysctls(full, CONTAINER_SYSCTLS)
        with IPRoute(netns=full, flags=0) as ipr:
            ipr.link("set", index=_link_index(ipr, "lo"), state="up")
        return full

    def remove_netns(self, name: str) -> None:
        """Delete a namespace made by ``add_netns`` (by short or full name). Idempotent."""
        full = name if name.startswith(f"{self.prefix}-") else self.netns_name(name)
        if netns_exists(full):
            pnetns.remove(full)
        rec = self.record
        self._save(replace(rec, netns=tuple(n for n in rec.netns if n != full)))

    def add_outsider(self, name: str, k: int = 200) -> tuple[str, str]:
        """A namespace ``<prefix>-<name>`` on the underlay that is no lab host: ``ul0`` with
        address ``underlay_subnet + k`` and nothing else (no agent, no etcd). Returns (netns,
        address). For attacks: it can reach every VTEP, as anything on a shared segment can."""
        ns = self.netns_name(name)
        address = str(self.underlay_subnet.network_address + k)
        root_end = f"{self.prefix}-{name}"[:15]
        if not _NAME.match(name) or len(ns) > 15:
            raise LabError(f"netns name {ns!r}: use a-z0-9- and at most 15 characters")
        self._record_netns(ns)
        pnetns.create(ns)
        self._record_link(root_end)
        with IPRoute() as ipr:
            ipr.link("add", ifname=root_end, kind="veth", peer={"ifname": "ul0", "net_ns_fd": ns})
            write_sysctls(None, {f"net/ipv6/conf/{root_end}/disable_ipv6": 1})
            idx, br = _link_index(ipr, root_end), _link_index(ipr, self.underlay_bridge)
            ipr.link("set", index=idx, master=br, state="up")
        self._ipv6_underlay(ns)
        with IPRoute(netns=ns, flags=0) as h:
            h.link("set", index=_link_index(h, "lo"), state="up")
            idx = _link_index(h, "ul0")
            _add_address(h, idx, address, self.underlay_subnet.prefixlen)
            h.link("set", index=idx, state="up")
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
        rec = self.record
        self._save(replace(rec, procs=(*rec.procs, self._ref_of(proc))))
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
                    "metrics": self.metrics_address(h.name),
                    "agent_pid": h.agent.pid
                    if h.agent is not None and is_running(h.agent)
                    else None,
                }
                for h in rec.hosts
            ],
        }

    def down(self) -> None:
        """Remove every recorded trace of the lab. Idempotent; best effort on each object."""
        rec = lab_state.load(self.workdir)
        if rec is None:
            with contextlib.suppress(OSError):
                self.workdir.rmdir()  # only if empty: we never delete what we did not record
            return
        problems: list[str] = []
        for ref in (*rec.procs, *(h.agent for h in rec.hosts)):
            stop_process(ref)
        for h in rec.hosts:  # after the agents (they would react), before the namespaces
            if h.ovs_dir is not None:
                problems += _stop_ovs(Path(h.ovs_dir))
        stop_process(rec.etcd_keeper, timeout=15.0)  # the keeper stops etcd cleanly
        stop_process(rec.etcd)
        self._reap_children()
        with IPRoute() as ipr:
            for name in rec.root_links:  # deleting one end of a veth deletes both
                with contextlib.suppress(NetlinkError):
                    idx = _link_index(ipr, name)
                    if idx is not None:
                        ipr.link("del", index=idx)
        for ns in reversed(rec.netns):
            try:
                if netns_exists(ns):
                    pnetns.remove(ns)
            except OSError as exc:
                problems.append(f"netns {ns}: {exc}")
        with IPRoute() as ipr:
            for name in rec.bridges:
                with contextlib.suppress(NetlinkError):
                    idx = _link_index(ipr, name)
                    if idx is not None:
                        ipr.link("del", index=idx)
            deadline = time.monotonic() + 5.0
            left = [n for n in (*rec.bridges, *rec.root_links) if _link_index(ipr, n) is not None]
            while left and time.monotonic() < deadline:
                time.sleep(0.05)
                left = [n for n in left if _link_index(ipr, n) is not None]
        problems += [f"link {n} still exists" for n in left]
        if problems:
            raise LabError("lab down incomplete: " + "; ".join(problems))
        shutil.rmtree(self.workdir, ignore_errors=True)


def _stop_ovs(workdir: Path) -> list[str]:
    """Stop the OVS instance in ``workdir`` (by its pidfiles); what is still running after."""
    lab_ovs.stop_workdir(workdir)
    inst = lab_ovs.OvsInstance(None, workdir)
    left = [(n, r) for n, r in (("ovsdb-server", inst.ovsdb_ref), ("ovs-vswitchd",
            inst.vswitchd_ref)) if r is not None and is_running(r)]  # fmt: skip
    return [f"{n} (pid {r.pid}) of {workdir} still runs" for n, r in left]


def _add_address(ipr: IPRoute, index: int | None, address: str, prefixlen: int) -> None:
    """Add ``address/prefixlen`` on link ``index``; an IPv6 one without duplicate address
    detection (it would hold the VTEP tentative for a second or more)."""
    assert index is not None, f"no link for {address}"
    flags = {"flags": 0x02} if ":" in address else {}  # IFA_F_NODAD
    ipr.addr("add", index=index, address=address, prefixlen=prefixlen, **flags)


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

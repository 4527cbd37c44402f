"""``heddle agent``: the composition root of the per-host agent.

``Agent`` wires the parts and starts them in order -- membership, the watches
(``controller/store/interest.py``), Docker plugin and telemetry (they need only etcd), then,
once every watch holds a full listing, the data plane, the
status writer and the reconciler -- and stops them in the reverse order. The data plane is
never touched before that first listing: acting on an empty picture would tear down every
tunnel of a host whose agent restarts while etcd is down. On exit the lease is revoked (the
host shows as not alive) and the data plane is left as it is.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from controller import __version__
from controller.agent import AgentConfig
from controller.dataplane.announce import Announcer
from controller.dataplane.backend import DataPlane
from controller.diag.facts import NetworkFacts
from controller.membership import Membership
from controller.model.errors import HeddleError
from controller.model.records import Host
from controller.model.view import HostView
from controller.reconcile.loop import PassResult, Reconciler
from controller.reconcile.status import StatusWriter
from controller.reconcile.trigger import Trigger
from controller.store.etcd import EtcdKV, TLSFiles
from controller.store.interest import Interest
from controller.telemetry.health import Health
from controller.telemetry.metrics import AgentMetrics, BuildInfo
from controller.telemetry.server import NotReady, TelemetryServer

log = logging.getLogger("heddle.agent")
STUCK_AFTER = 15.0  # three watch backoff caps: the status then says the agent is stuck


def underlay_mtu(vtep: str) -> int:
    """MTU of the interface carrying ``vtep`` (IPv4 or IPv6) in this namespace (1500 if none
    carries it)."""
    import socket

    from pyroute2 import IPRoute

    family = socket.AF_INET6 if ":" in vtep else socket.AF_INET
    with IPRoute() as ipr:
        for addr in ipr.get_addr(family=family):
            if addr.get("IFA_ADDRESS") == vtep:
                links = ipr.get_links(addr["index"])
                return int(links[0].get("IFLA_MTU")) if links else 1500
    return 1500


def make_dataplane(
    cfg: AgentConfig, host: Host, trigger: Trigger | None, for_diagnostics: bool = False
) -> DataPlane[Any, Any]:
    """The configured backend. OVS notices an ovs-vswitchd restart itself and wakes the
    reconciler (``trigger.fire``) so flows come back at once, not at the next resync.
    ``for_diagnostics``: a second, read-only handle for the telemetry thread (drivers are not
    thread-safe) that reads every endpoint namespace afresh."""
    from controller.dataplane.incremental import Incremental, Notice
    from controller.dataplane.kernel_events import KernelEvents

    def listen(notice: Notice, wanted: Callable[[], bool]) -> KernelEvents:
        return KernelEvents(None, notice, wanted).start()

    # The reconciler's resync (every 0.8-1.2 intervals) starts afresh; the ttl is a safety net.
    remember = 1.5 * cfg.resync_interval
    on_drift = None if trigger is None else trigger.fire
    at_once = cfg.drift_repair == "at-once"
    # Endpoint namespaces, and the whole observation on the incremental path, are read afresh
    # at every resync, not at every event-driven pass.
    # (75 %: a resync comes 0.8-1.2 intervals after the last pass.)
    ttl = 0.0 if for_diagnostics else min(0.75 * cfg.resync_interval, 10.0)
    if cfg.backend == "ovs":
        from controller.dataplane.ovs import OvsDataPlane
        from controller.plan.ovs_incremental import OvsShortcut

        ovs = OvsDataPlane(
            host.vtep,
            ovsdb=cfg.ovsdb or "unix:/var/run/openvswitch/db.sock",
            datapath=cfg.ovs_datapath,
            underlay_dev=cfg.underlay_dev,
            on_change=on_drift,  # a restart: a full wake-up, which reads OVS afresh
            endpoint_ttl=ttl,
        )
        if for_diagnostics:
            return ovs
        return Incremental(
            ovs, OvsShortcut(ovs.layout), remember, on_drift=on_drift,
            still=ovs.unchanged if at_once else None, listen=listen if at_once else None,
        )  # fmt: skip
    from controller.dataplane.kernel import KernelDataPlane
    from controller.plan.kernel_incremental import KernelShortcut

    kernel = KernelDataPlane(host.vtep, endpoint_ttl=ttl, filters=cfg.filters)
    if for_diagnostics:
        return kernel
    return Incremental(
        kernel, KernelShortcut(cfg.filters), remember, on_drift=on_drift,
        listen=listen if at_once else None,
    )  # fmt: skip


class Agent:
    """One host's agent. ``run()`` blocks until ``stop()`` (or SIGTERM/SIGINT)."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        tls = TLSFiles(cfg.cacert, cfg.cert, cfg.key) if (cfg.cacert or cfg.cert) else None
        self._urls = list(cfg.etcd)
        self._tls = tls
        self.host = Host(
            cfg.host, cfg.vtep, cfg.underlay_mtu or underlay_mtu(cfg.vtep),
            "kernel" if cfg.backend == "kernel" else "ovs", __version__,
        )  # fmt: skip
        self.kv = self._new_kv()
        self.stopping = threading.Event()
        self.trigger = Trigger()
        self.membership = Membership(self.kv, self.host)
        self.interest = Interest(self._new_kv, self.host.name, self.trigger.fire_desired)
        self.metrics = AgentMetrics(
            BuildInfo(__version__, self.host.backend, self.host.name),
            lambda: self.interest,
            self.drops,
            lambda: self.membership.restored,
        )
        self.reconciler: Reconciler[Any, Any] | None = None
        self._worker: threading.Thread | None = None
        self._dataplane: DataPlane[Any, Any] | None = None
        self._announcer = Announcer() if cfg.announce else None
        self._diag_plane: DataPlane[Any, Any] | None = None
        # One long-lived thread owns the diagnostic handle: pyroute2's sockets belong to the
        # thread that opened them, and the HTTP server answers each request on a new thread.
        self._diag_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heddle-diag")
        self._status: StatusWriter | None = None
        self._plugin: Any = None
        self._cni: Any = None
        self._readiness: Any = None
        self.health = Health(
            worker_alive=lambda: self._worker is None or self._worker.is_alive(),
            first_pass_done=self._first_pass_done,
            etcd_contact=lambda: self.membership.last_contact,
        )  # fmt: skip
        self.telemetry: TelemetryServer | None = None

    def _first_pass_done(self) -> bool:
        return self.reconciler is not None and self.reconciler.first_ok.is_set()

    def _new_kv(self) -> EtcdKV:
        return EtcdKV(self._urls, tls=self._tls)

    # -- lifecycle ----------------------------------------------------------------------------
    def install_signals(self) -> None:
        """SIGTERM/SIGINT stop the agent; SIGUSR1 writes every thread's stack to stderr (the
        journal) and the agent goes on: what an operator needs to see where a stuck agent
        waits. Main thread only."""
        agent_pid = os.getpid()
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)

        def on_signal(signum: int, _frame: object) -> None:
            if os.getpid() != agent_pid:  # a short-lived child (pyroute2's netns helper)
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            log.info("signal %d: stopping", signum)
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> int:
        self.membership.start()
        self.interest.start()
        self._start_plugin()
        self._start_cni()
        self._start_telemetry()
        log.info(
            "agent %s (vtep %s, mtu %d) waiting for etcd %s",
            self.host.name, self.host.vtep, self.host.underlay_mtu, ",".join(self._urls),
        )  # fmt: skip
        while not self.stopping.is_set() and not self.interest.wait_synced(1.0):
            pass
        if not self.stopping.is_set():
            self._start_reconciler()
        # A timed wait: CPython runs a signal handler only in the main thread, and a SIGTERM
        # the kernel hands to another thread does not interrupt an untimed lock wait.
        while not self.stopping.wait(0.5):
            pass
        self._shutdown()
        return 0

    def stop(self) -> None:
        """Ask ``run`` to return. Thread- and signal-safe; idempotent."""
        self.stopping.set()
        self.trigger.fire()

    def _start_reconciler(self) -> None:
        cfg = self.cfg
        self._dataplane = make_dataplane(cfg, self.host, self.trigger)
        self._status = StatusWriter(
            self.kv, self.host.name, stuck=lambda: self.interest.stalled(STUCK_AFTER),
            metrics=cfg.metrics_advertised if self.telemetry is not None else None,
            notices=self.membership.notices,
        )  # fmt: skip
        status = self._status

        def on_result(result: PassResult) -> None:
            self.metrics.record_pass(result)
            status(result)
            if self._readiness is not None:
                self._readiness.notify()  # a Join waiting for its veth looks again at once

        self.reconciler = Reconciler(
            self.host, self.interest.snapshot, self._dataplane, self.trigger, on_result,
            resync_interval=cfg.resync_interval, link_local_vteps=cfg.allow_link_local_vteps,
            announcer=self._announcer,
        )  # fmt: skip
        self._worker = threading.Thread(target=self.reconciler.run, name="reconciler", daemon=True)
        self._worker.start()

    def _shutdown(self) -> None:
        if self.reconciler is not None:
            self.reconciler.stop()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=10)
        if self.telemetry is not None:
            self.telemetry.stop()
        for server in (self._plugin, self._cni):
            if server is not None:
                server.stop()  # in-flight calls finish (<= 2 s); the socket file is removed
        if self._readiness is not None:
            self._readiness.close()
        if self._status is not None:
            self._status.close()
        self.interest.stop()
        self.membership.stop()
        if self._dataplane is not None:
            self._dataplane.close()
        if self._announcer is not None:
            self._announcer.close()
        if self._diag_plane is not None:
            self._diag_pool.submit(self._diag_plane.close).result()
        self._diag_pool.shutdown()
        self.kv.close()

    # -- optional parts -----------------------------------------------------------------------
    def _start_plugin(self) -> None:
        """Serve the Docker plugin (unless ``--no-plugin``). It needs only etcd, so it is up
        before the first pass: dockerd may call it as soon as it starts."""
        cfg = self.cfg
        if cfg.plugin_socket is None:
            return
        from controller.plugin.service import plugin_server

        server = plugin_server(
            self.kv, self.host.name, cfg.plugin_socket, self._waiter(), on_call=self._on_call
        )
        self._plugin = self._serve(server, "docker plugin")

    def _on_call(self, method: str, status: int, seconds: float) -> None:
        self.metrics.record_plugin(method, status == 200, seconds)

    @staticmethod
    def _serve(server: Any, what: str) -> Any:
        """Start ``server``; None (logged) if it cannot serve. The data plane is the agent's
        first job: a socket another process serves (or a directory we cannot write) must not
        stop it. The error says why Docker or the CNI runtime cannot reach us."""
        try:
            server.start()
        except (HeddleError, OSError) as exc:
            log.error("%s NOT served on %s: %s", what, server.path, exc)
            return None
        log.info("%s on %s", what, server.path)
        return server

    def _waiter(self) -> Any:
        """The one ``LinkReadiness`` Docker's Join and CNI's ADD wait with (each pass
        ``notify``s it)."""
        from controller.plugin.readiness import LinkReadiness

        if self._readiness is None:
            self._readiness = LinkReadiness(require_master=self.cfg.backend == "kernel")
        return self._readiness

    def _start_cni(self) -> None:
        """Serve ``heddle-cni`` (unless ``--no-cni``); like the plugin, before the first pass,
        and a socket that cannot be served is logged, not fatal."""
        cfg = self.cfg
        if cfg.cni_socket is None:
            return
        from controller.cni.service import CniService, cni_routes
        from controller.plugin.server import PluginServer

        service = CniService(self.kv, self.host.name, self._waiter(), self._first_pass_done)
        server = PluginServer(cfg.cni_socket, cni_routes(service), on_call=self._on_call)
        self._cni = self._serve(server, "CNI plugin")

    def _start_telemetry(self) -> None:
        """Serve metrics, health and diagnostics (``--metrics``). Like the plugin, an address
        that cannot be bound is logged and the agent goes on."""
        listen = self.cfg.metrics_listen
        if listen is None:
            return
        server = TelemetryServer(listen, self.metrics, self.health, self.diagnose)
        try:
            server.start()
        except OSError as exc:
            log.error("metrics NOT served on %s: %s", self.cfg.metrics, exc)
            return
        log.info("metrics, health and diagnostics on %s", self.cfg.metrics)
        self.telemetry = server

    def diagnose(self, network: str) -> NetworkFacts | None:
        """What this host's data plane holds for ``network`` now (a fresh, read-only
        observation of that network only). Raises ``NotReady`` before the first pass and
        ``HeddleError`` if the data plane cannot be read. Thread-safe."""
        rec = self.reconciler
        view = rec.view if rec is not None else None
        if view is None:
            raise NotReady("no pass has run yet")
        nv = view.network(network)
        if nv is None:
            return None
        facts = self._diag_pool.submit(self._observe_one, HostView(view.host, (nv,))).result()
        return None if facts is None else replace(facts, observed_at=time.time())

    def drops(self) -> Mapping[str, int]:
        """The data plane's drop counters (for the metrics), read on the diagnostic thread."""
        return self._diag_pool.submit(self._read_drops).result(timeout=5)

    def _read_drops(self) -> Mapping[str, int]:
        if self._diag_plane is None:
            self._diag_plane = make_dataplane(self.cfg, self.host, None, for_diagnostics=True)
        return self._diag_plane.drops()

    def _observe_one(self, scoped: HostView) -> NetworkFacts | None:
        """On the diagnostic thread: observe ``scoped`` (one network) with the diagnostic
        handle, opened on first use."""
        if self._diag_plane is None:
            self._diag_plane = make_dataplane(self.cfg, self.host, None, for_diagnostics=True)
        actual = self._diag_plane.observe(scoped)
        return self._diag_plane.facts(scoped, scoped.networks[0].network.name, actual)


def run_agent(cfg: AgentConfig) -> int:
    """Run the agent of ``cfg`` in this process until SIGTERM/SIGINT."""
    agent = Agent(cfg)
    agent.install_signals()
    return agent.run()

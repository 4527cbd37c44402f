"""The ``heddle`` command line: the composition root, the only place that wires objects together.

Exit codes: 0 success; 1 a refused request (invalid input, conflict, not found, exhausted) with a
message on stderr and nothing written; 2 usage error; 3 etcd unreachable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from controller import __version__
from controller.lab.docker_engine import DEFAULT_ENGINE, ENGINES
from controller.model.errors import HeddleError, StoreUnavailable
from controller.output import as_json, table

if TYPE_CHECKING:
    from controller.agent import AgentConfig
    from controller.dataplane.backend import DataPlane
    from controller.model.records import Host
    from controller.reconcile.trigger import Trigger
    from controller.store.kv import KV

DEFAULT_ETCD = "http://127.0.0.1:2379"


_OUTPUT = argparse.ArgumentParser(add_help=False)
_OUTPUT.add_argument(
    "-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS,
    help="output format (also accepted before the command)",
)  # fmt: skip


def _leaf(group: Any, name: str, **kw: Any) -> argparse.ArgumentParser:
    """A verb's parser that also takes ``-o``: ``heddle -o json lab status`` and ``heddle lab
    status -o json`` mean the same (the README writes the latter)."""
    parser: argparse.ArgumentParser = group.add_parser(name, parents=[_OUTPUT], **kw)
    return parser


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="heddle", description="etcd-backed overlay networks")
    p.add_argument("--version", action="version", version=f"heddle {__version__}")
    p.add_argument(
        "--etcd",
        default=os.environ.get("HEDDLE_ETCD", DEFAULT_ETCD),
        help="etcd URL(s), comma separated (env HEDDLE_ETCD; default %(default)s)",
    )
    p.add_argument("--cacert", help="CA certificate to verify etcd (enables TLS)")
    p.add_argument("--cert", help="client certificate for etcd")
    p.add_argument("--key", help="client key for etcd")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    net = sub.add_parser("network", help="overlay networks").add_subparsers(
        dest="action", required=True
    )
    c = _leaf(net, "create", help="create a network")
    c.add_argument("name")
    c.add_argument("--subnet", required=True, help="IPv4 CIDR, prefix length at most /30")
    c.add_argument("--vni", type=int, help="VXLAN network identifier (default: lowest free)")
    c.add_argument("--gateway", help="gateway address inside the subnet (optional)")
    c.add_argument("--mtu", type=int, help="overlay MTU (default: smallest underlay MTU - 50)")
    _leaf(net, "ls", help="list networks")
    s = _leaf(net, "show", help="show one network and its endpoints")
    s.add_argument("name")
    r = _leaf(net, "rm", help="remove a network")
    r.add_argument("name")
    r.add_argument("--force", action="store_true", help="also remove its endpoints")

    ep = sub.add_parser("endpoint", help="endpoints").add_subparsers(dest="action", required=True)
    c = _leaf(ep, "create", help="create an endpoint (allocates its address)")
    c.add_argument("network")
    c.add_argument("--host", required=True)
    c.add_argument("--netns", help="network namespace to move the interface into")
    c.add_argument("--ip", help="address to take (default: lowest free)")
    c.add_argument("--ifname", default="eth0")
    c.add_argument("--id", dest="endpoint_id", help="endpoint id (default: random)")
    ls = _leaf(ep, "ls", help="list endpoints")
    ls.add_argument("network", nargs="?")
    s = _leaf(ep, "show", help="show one endpoint")
    s.add_argument("network")
    s.add_argument("id")
    r = _leaf(ep, "rm", help="remove an endpoint and release its address")
    r.add_argument("network")
    r.add_argument("id")

    host = sub.add_parser("host", help="hosts").add_subparsers(dest="action", required=True)
    _leaf(host, "ls", help="list hosts, liveness and last reconcile status")

    a = sub.add_parser("agent", help="run the per-host agent")
    a.add_argument("--config", help="TOML file with the same keys as these flags")
    a.add_argument("--host", dest="host_name")
    a.add_argument("--vtep")
    a.add_argument("--backend", choices=("kernel", "ovs"))
    a.add_argument("--underlay-mtu", type=int, help="default: MTU of the VTEP's interface")
    a.add_argument("--resync-interval", type=float)
    a.add_argument("--ovsdb")
    a.add_argument("--ovs-datapath", choices=("system", "netdev"))
    a.add_argument("--underlay-dev")
    a.add_argument("--plugin-socket")
    a.add_argument("--no-plugin", action="store_true", default=None)
    a.add_argument(
        "--allow-link-local-vteps",
        action="store_true",
        default=None,
        help="accept hosts whose VTEP is link-local (169.254.0.0/16); refused by default",
    )

    lab = sub.add_parser("lab", help="multi-host lab on network namespaces").add_subparsers(
        dest="action", required=True
    )
    up = _leaf(lab, "up", help="start a lab (etcd + N hosts with agents)")
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--backend", choices=("kernel", "ovs", "mixed"), default="kernel")
    up.add_argument(
        "--docker",
        nargs="?",
        const=DEFAULT_ENGINE,
        choices=ENGINES,
        help="also a private dockerd per host: Debian's 20.10 (the default) or trixie's 26.1",
    )
    _leaf(lab, "down", help="remove every trace of the lab")
    _leaf(lab, "status", help="show the lab")
    _leaf(lab, "demo", help="start a 3-host lab if needed and run the demo checks")
    return p


def make_kv(args: argparse.Namespace) -> KV:
    """The store client for ``args`` (lazy import: the lab and --help need no gRPC)."""
    from controller.store.etcd import EtcdKV, TLSFiles

    urls = [u.strip() for u in args.etcd.split(",") if u.strip()]
    tls = None
    if args.cacert or args.cert or args.key:
        tls = TLSFiles(cacert=args.cacert, cert=args.cert, key=args.key)
    return EtcdKV(urls, tls=tls)


def _emit(
    args: argparse.Namespace, obj: Any, headers: Sequence[str], rows: list[list[Any]]
) -> None:
    print(as_json(obj) if args.output == "json" else table(headers, rows))


def _cmd_network(args: argparse.Namespace, kv: KV) -> int:
    from controller.desired import DesiredState

    ds = DesiredState(kv)
    heads = ["name", "vni", "subnet", "gateway", "mtu"]
    if args.action == "create":
        n = ds.create_network(args.name, args.subnet, args.vni, args.gateway, args.mtu)
        _emit(args, asdict(n), heads, [[n.name, n.vni, n.subnet, n.gateway, n.mtu]])
    elif args.action == "ls":
        nets = ds.networks()
        _emit(
            args,
            [asdict(n) for n in nets],
            heads,
            [[n.name, n.vni, n.subnet, n.gateway, n.mtu] for n in nets],
        )
    elif args.action == "show":
        n = ds.get_network(args.name)
        eps = ds.endpoints(args.name)
        if args.output == "json":
            print(as_json({**asdict(n), "endpoints": [asdict(e) for e in eps]}))
        else:
            print(table(heads, [[n.name, n.vni, n.subnet, n.gateway, n.mtu]]))
            print()
            print(_endpoint_table(eps))
    elif args.action == "rm":
        removed = ds.remove_network(args.name, force=args.force)
        if args.output == "json":
            print(as_json({"removed": args.name, "endpoints_removed": removed}))
        else:
            print(
                f"removed network {args.name}" + (f" and {removed} endpoint(s)" if removed else "")
            )
    return 0


def _endpoint_table(eps: Sequence[Any]) -> str:
    return table(
        ["network", "id", "host", "ip", "mac", "netns", "ifname"],
        [[e.network, e.id, e.host, e.ip, e.mac, e.netns, e.ifname] for e in eps],
    )


def _cmd_endpoint(args: argparse.Namespace, kv: KV) -> int:
    from controller.desired import DesiredState

    ds = DesiredState(kv)
    if args.action == "create":
        e = ds.create_endpoint(
            args.network, args.host, args.netns, args.ip, args.ifname, args.endpoint_id
        )
        print(as_json(asdict(e)) if args.output == "json" else _endpoint_table([e]))
    elif args.action == "ls":
        eps = ds.endpoints(args.network)
        print(as_json([asdict(e) for e in eps]) if args.output == "json" else _endpoint_table(eps))
    elif args.action == "show":
        e = ds.get_endpoint(args.network, args.id)
        print(as_json(asdict(e)) if args.output == "json" else _endpoint_table([e]))
    elif args.action == "rm":
        e = ds.remove_endpoint(args.network, args.id)
        if args.output == "json":
            print(as_json({"removed": asdict(e)}))
        else:
            print(f"removed endpoint {e.network}/{e.id} and released {e.ip}")
    return 0


def _cmd_host(args: argparse.Namespace, kv: KV) -> int:
    from controller.hosts import list_hosts

    infos = list_hosts(kv)
    if args.output == "json":
        print(
            as_json(
                [
                    {
                        **asdict(i.host),
                        "alive": i.alive,
                        "status": asdict(i.status) if i.status else None,
                    }
                    for i in infos
                ]
            )
        )
        return 0
    rows = []
    for i in infos:
        st = i.status
        state = "-" if st is None else "ok" if st.ok else "; ".join(
            ([f"stuck: {st.stuck}"] if st.stuck else []) + [f"error: {e}" for e in st.errors]
        ) or "not ok"
        rows.append(
            [
                i.host.name,
                i.host.vtep,
                i.host.backend,
                "yes" if i.alive else "no",
                st.revision if st else None,
                state,
                st.skipped_count if st else None,
            ]
        )
    print(table(["name", "vtep", "backend", "alive", "revision", "status", "skipped"], rows))
    return 0


def _cmd_lab(args: argparse.Namespace) -> int:
    from controller.lab import commands

    if args.action == "up":
        st = commands.lab_up(args.hosts, args.backend, docker=args.docker)
        print(as_json(st) if args.output == "json" else _lab_table(st))
    elif args.action == "down":
        commands.lab_down()
        print("lab removed")
    elif args.action == "status":
        st = commands.lab_status()
        print(as_json(st) if args.output == "json" else _lab_table(st))
    elif args.action == "demo":
        return commands.lab_demo()
    return 0


def _lab_table(st: dict[str, Any]) -> str:
    docker = any("docker_host" in h for h in st.get("hosts", []))
    heads = ["host", "netns", "vtep", "backend", "agent pid"] + (["docker host"] if docker else [])
    rows = [
        [h["name"], h["netns"], h["vtep"], h["backend"], h.get("agent_pid")]
        + ([h.get("docker_host")] if docker else [])
        for h in st.get("hosts", [])
    ]
    return f"etcd: {st.get('etcd')}\n" + table(heads, rows)


def _underlay_mtu(vtep: str) -> int:
    """MTU of the interface carrying ``vtep`` in this namespace (1500 if none carries it)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for addr in ipr.get_addr(family=2):
            if addr.get("IFA_ADDRESS") == vtep:
                links = ipr.get_links(addr["index"])
                return int(links[0].get("IFLA_MTU")) if links else 1500
    return 1500


def _make_dataplane(cfg: AgentConfig, host: Host, trigger: Trigger) -> DataPlane[Any, Any]:
    """The configured backend. OVS notices an ovs-vswitchd restart itself and wakes the
    reconciler (``trigger.fire``) so flows come back at once, not at the next resync."""
    if cfg.backend == "ovs":
        from controller.dataplane.ovs import OvsDataPlane

        return OvsDataPlane(
            host.vtep,
            ovsdb=cfg.ovsdb or "unix:/var/run/openvswitch/db.sock",
            datapath=cfg.ovs_datapath,
            underlay_dev=cfg.underlay_dev,
            on_change=trigger.fire,
        )
    from controller.dataplane.kernel import KernelDataPlane

    # Endpoint namespaces are re-read at every resync, not at every event-driven pass.
    # (75 %: a resync comes 0.8-1.2 intervals after the last pass.)
    return KernelDataPlane(host.vtep, endpoint_ttl=min(0.75 * cfg.resync_interval, 10.0))


def run_agent(args: argparse.Namespace) -> int:
    """Wire and run the agent until SIGTERM/SIGINT: membership, watcher + cache, reconciler.

    The data plane is never touched before the cache holds a full listing of etcd: acting on an
    empty picture would tear down every tunnel of a host whose agent restarts while etcd is down.
    On exit the lease is revoked (the host shows as not alive) and the data plane is left as is.
    """
    import signal
    import threading

    from controller.agent import load_config
    from controller.membership import Membership
    from controller.model.records import Host
    from controller.reconcile.loop import PassResult, Reconciler
    from controller.reconcile.status import StatusWriter
    from controller.reconcile.trigger import Trigger
    from controller.store import keys
    from controller.store.cache import Cache
    from controller.store.etcd import EtcdKV, TLSFiles

    cfg = load_config(args)
    log = logging.getLogger("heddle.agent")
    tls = TLSFiles(cfg.cacert, cfg.cert, cfg.key) if (cfg.cacert or cfg.cert) else None
    urls = list(cfg.etcd)

    def new_kv() -> EtcdKV:
        return EtcdKV(urls, tls=tls)

    host = Host(
        cfg.host,
        cfg.vtep,
        cfg.underlay_mtu or _underlay_mtu(cfg.vtep),
        "kernel" if cfg.backend == "kernel" else "ovs",
        __version__,
    )
    kv = new_kv()
    stop = threading.Event()
    trigger = Trigger()
    cache = Cache()

    agent_pid = os.getpid()

    def on_signal(signum: int, _frame: object) -> None:
        if os.getpid() != agent_pid:  # a short-lived child (pyroute2's netns helper) inherited us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        log.info("signal %d: stopping", signum)
        stop.set()
        trigger.fire()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from controller.store.watcher import Watcher

    membership = Membership(kv, host)
    watcher = Watcher(new_kv, keys.ROOT, cache, trigger.fire_desired)
    membership.start()
    watcher.start()
    plugin, readiness = _start_plugin(cfg, kv, host)
    log.info(
        "agent %s (vtep %s, mtu %d) waiting for etcd %s",
        host.name,
        host.vtep,
        host.underlay_mtu,
        ",".join(urls),
    )
    while not stop.is_set() and not watcher.wait_synced(1.0):
        pass
    dataplane = _make_dataplane(cfg, host, trigger)
    # Stuck: the watch has not followed etcd for 3 watch backoff caps (status says so, not ok).
    status = StatusWriter(kv, host.name, stuck=lambda: watcher.stalled(15.0))

    def on_result(result: PassResult) -> None:
        status(result)
        if readiness is not None:
            readiness.notify()  # a Join waiting for its veth looks again at once

    reconciler = Reconciler(
        host,
        cache.snapshot,
        dataplane,
        trigger,
        on_result,
        resync_interval=cfg.resync_interval,
        link_local_vteps=cfg.allow_link_local_vteps,
    )
    worker = threading.Thread(target=reconciler.run, name="reconciler", daemon=True)
    if not stop.is_set():
        worker.start()
    stop.wait()
    reconciler.stop()
    if worker.is_alive():
        worker.join(timeout=10)
    if plugin is not None:
        plugin.stop()  # in-flight calls finish (<= 2 s); the socket file is removed
        readiness.close()
    status.close()
    watcher.stop()
    membership.stop()
    dataplane.close()
    kv.close()
    return 0


def _start_plugin(cfg: AgentConfig, kv: KV, host: Host) -> tuple[Any, Any]:
    """Serve the Docker plugin (unless ``--no-plugin``). It needs only etcd, so it is up before
    the first pass: dockerd may call it as soon as it starts. Returns (server, readiness)."""
    if cfg.plugin_socket is None:
        return None, None
    from controller.plugin.readiness import LinkReadiness
    from controller.plugin.service import plugin_server

    log = logging.getLogger("heddle.agent")
    readiness = LinkReadiness(require_master=cfg.backend == "kernel")
    server = plugin_server(kv, host.name, cfg.plugin_socket, readiness)
    try:
        server.start()
    except (HeddleError, OSError) as exc:
        # The data plane is the agent's first job; a socket another process serves (or a
        # directory we cannot write) must not stop it. The error says why Docker cannot reach us.
        log.error("docker plugin NOT served on %s: %s", cfg.plugin_socket, exc)
        readiness.close()
        return None, None
    log.info("docker plugin on %s", cfg.plugin_socket)
    return server, readiness


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "lab":
        try:
            return _cmd_lab(args)
        except HeddleError as exc:
            print(f"heddle: error: {exc}", file=sys.stderr)
            return 1
    if args.command == "agent":
        try:
            return run_agent(args)
        except HeddleError as exc:
            print(f"heddle: error: {exc}", file=sys.stderr)
            return 1
    try:
        kv = make_kv(args)
    except HeddleError as exc:
        print(f"heddle: error: {exc}", file=sys.stderr)
        return 1
    try:
        handler = {"network": _cmd_network, "endpoint": _cmd_endpoint, "host": _cmd_host}
        return handler[args.command](args, kv)
    except StoreUnavailable as exc:
        print(f"heddle: error: etcd unavailable: {exc}", file=sys.stderr)
        return 3
    except HeddleError as exc:
        print(f"heddle: error: {exc}", file=sys.stderr)
        return 1
    finally:
        kv.close()

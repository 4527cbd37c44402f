"""The ``heddle`` command line's grammar and exit codes. Pure (builds an ``argparse`` parser).

Exit codes, for every verb: ``OK`` success; ``REFUSED`` a refused request (invalid input,
conflict, not found, exhausted; for ``status`` and ``trace``: something is not healthy) with a
message on stderr and nothing written; ``USAGE`` a usage error (argparse's own code);
``UNAVAILABLE`` etcd unreachable (retrying later can help).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from controller import __version__
from controller.lab.docker_engine import DEFAULT_ENGINE, ENGINES
from controller.store.access import OPERATOR_USER

OK, REFUSED, USAGE, UNAVAILABLE = 0, 1, 2, 3
DEFAULT_ETCD = "http://127.0.0.1:2379"
LOG_FORMATS = ("text", "json")

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


def build_parser() -> argparse.ArgumentParser:
    """The whole grammar: global flags, then
    ``network|endpoint|host|status|trace|access|store|cni|agent|lab``."""
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
    p.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text",
        help="log lines as text (default) or one JSON object per line, for log shippers",
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    _records(sub)
    st = _leaf(sub, "status", help="the cluster at a glance; exit 1 if anything is unhealthy")
    st.add_argument(
        "--stale-after", type=float, default=90.0,
        help="a host whose last status is older than this many seconds is unhealthy (%(default)s)",
    )  # fmt: skip
    tr = _leaf(sub, "trace", help="the path from an endpoint to an address, hop by hop")
    tr.add_argument("network")
    tr.add_argument("source", metavar="FROM", help="endpoint id or address")
    tr.add_argument("dest", metavar="TO", help="an address in the network")
    tr.add_argument("--timeout", type=float, default=2.0, help="per-agent request timeout")
    _access(sub)
    sto = sub.add_parser("store", help="the etcd layout itself").add_subparsers(
        dest="action", required=True
    )
    _leaf(
        sto, "upgrade",
        help="index every endpoint by host and tell agents to follow only their own networks "
        "(after every writer runs this release; idempotent)",
    )  # fmt: skip
    cni = sub.add_parser("cni", help="the CNI plugin (heddle-cni)").add_subparsers(
        dest="action", required=True
    )
    ci = _leaf(cni, "install", help="write the CNI configuration list of a network for a host")
    ci.add_argument("network")
    ci.add_argument("--host", help="the host whose agent serves it (default: this machine's name)")
    ci.add_argument("--dir", default="/etc/cni/net.d", help="where (default %(default)s)")
    ci.add_argument("--socket", help="the agent's CNI socket (default /run/heddle/cni.sock)")
    cp = _leaf(cni, "plugin", help="write the heddle-cni executable into a runtime's plugin dir")
    cp.add_argument("--dir", default="/opt/cni/bin", help="where (default %(default)s)")
    cp.add_argument(
        "--script", action="store_true", help="write the script even when cc is at hand"
    )
    _agent(sub)
    _lab(sub)
    return p


def _access(sub: Any) -> None:
    acc = sub.add_parser(
        "access", help="per-host etcd identities (users and roles, README: access)"
    ).add_subparsers(dest="action", required=True)
    for verb, text in (
        ("show", "print the roles heddle would give these hosts (no etcd needed)"),
        ("apply", "create them in etcd and turn authentication on (as etcd's root)"),
    ):
        a = _leaf(acc, verb, help=text)
        a.add_argument(
            "--host", action="append", default=[], dest="hosts", metavar="NAME",
            help="a host name (its certificate's CN); repeat for every host",
        )  # fmt: skip
        a.add_argument(
            "--operator", default=OPERATOR_USER,
            help="the operator identity's name (its certificate's CN; %(default)s)",
        )  # fmt: skip


def _records(sub: Any) -> None:
    net = sub.add_parser("network", help="overlay networks").add_subparsers(
        dest="action", required=True
    )
    c = _leaf(net, "create", help="create a network")
    c.add_argument("name")
    c.add_argument(
        "--subnet", required=True, action="append",
        help="IPv4 CIDR (/8../30) or IPv6 CIDR (/32../124); repeat it, one per family, for a "
        "dual-stack network",
    )  # fmt: skip
    c.add_argument("--vni", type=int, help="VXLAN network identifier (default: lowest free)")
    c.add_argument(
        "--gateway", action="append",
        help="gateway address inside a subnet (optional; one per family)",
    )  # fmt: skip
    c.add_argument("--mtu", type=int, help="overlay MTU (default: smallest underlay MTU - 50)")
    c.add_argument(
        "--egress", choices=("masquerade",),
        help="let endpoints reach the outside through the gateway (default: route nothing)",
    )  # fmt: skip
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
    c.add_argument(
        "--ip", action="append",
        help="address to take, one per family of the network (default: the lowest free)",
    )  # fmt: skip
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


def _agent(sub: Any) -> None:
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
    a.add_argument("--cni-socket", help="where heddle-cni reaches this agent "
                   "(default /run/heddle/cni.sock)")  # fmt: skip
    a.add_argument("--no-cni", action="store_true", default=None, help="serve no CNI plugin")
    a.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        help="serve Prometheus metrics, /healthz, /readyz and diagnostics here (off by default)",
    )
    a.add_argument(
        "--no-filters",
        action="store_true",
        default=None,
        help="kernel backend: do not keep the nftables filters (VXLAN only from members, "
        "anti-spoofing); for measuring their cost. Tables already there are left as they are",
    )
    a.add_argument(
        "--no-announce",
        action="store_true",
        default=None,
        help="do not send local endpoints a gratuitous ARP / unsolicited neighbour "
        "advertisement when an address of their network becomes reachable (they then wait "
        "for their own neighbour retry: up to a second with Linux's defaults)",
    )
    a.add_argument(
        "--drift-repair",
        choices=("at-once", "resync"),
        help="repair what someone else changed in the data plane at once (default: the kernel "
        "and OVSDB announce it) or only at the periodic resync",
    )
    a.add_argument(
        "--allow-link-local-vteps",
        action="store_true",
        default=None,
        help="accept hosts whose VTEP is link-local (169.254.0.0/16); refused by default",
    )


def _lab(sub: Any) -> None:
    lab = sub.add_parser("lab", help="multi-host lab on network namespaces").add_subparsers(
        dest="action", required=True
    )
    up = _leaf(lab, "up", help="start a lab (etcd + N hosts with agents)")
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--backend", choices=("kernel", "ovs", "mixed"), default="kernel")
    up.add_argument(
        "--underlay", choices=("ipv4", "ipv6"), default="ipv4",
        help="the VTEPs' family: ipv6 is VXLAN over IPv6 (any backend)",
    )  # fmt: skip
    up.add_argument(
        "--docker",
        nargs="?",
        const=DEFAULT_ENGINE,
        choices=ENGINES,
        help="also a private dockerd per host: Debian's 20.10 (the default) or trixie's 26.1",
    )
    up.add_argument(
        "--secure", action="store_true",
        help="etcd with TLS client certificates and one identity per host (as the rollout)",
    )  # fmt: skip
    up.add_argument(
        "--podman", action="store_true",
        help="also a private Podman per host, with heddle-cni for every heddle network",
    )  # fmt: skip
    pod = _leaf(lab, "podman", help="run a lab host's Podman: heddle lab podman h1 run ...")
    pod.add_argument("host")
    pod.add_argument("args", nargs=argparse.REMAINDER, help="podman's arguments")
    _leaf(lab, "down", help="remove every trace of the lab")
    _leaf(lab, "status", help="show the lab")
    _leaf(lab, "demo", help="start a 3-host lab if needed and run the demo checks")

"""The throw-away "host" namespace the agent benches run an agent in: loopback up and an
underlay bridge ``ul0`` holding the VTEP address. Shared by ``bench_agent_scale.py`` and
``bench_cluster_scale.py``; the caller removes the namespace (which removes everything in it)."""

from __future__ import annotations

from pyroute2 import IPRoute, netns


def make_host_ns(name: str, vtep: str) -> None:
    """Create namespace ``name`` with ``lo`` up and ``ul0`` (a bridge) carrying ``vtep``/24."""
    netns.create(name)
    with IPRoute(netns=name, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ipr.link("add", ifname="ul0", kind="bridge")
        ul = ipr.link_lookup(ifname="ul0")[0]
        ipr.addr("add", index=ul, address=vtep, prefixlen=24)
        ipr.link("set", index=ul, state="up")

"""KernelDataPlane against the real kernel, in throw-away namespaces (root only).

Every test gets a fresh "host" netns and endpoint netns named ``hdt-<random>-*``; the fixture
deletes them on teardown, even on failure, which removes every link created inside them. The
root namespace is never touched.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest
from pyroute2 import IPRoute, netns

from controller.dataplane.backend import DataPlaneError
from controller.dataplane.fake_kernel import FakeKernel
from controller.dataplane.incremental import Incremental
from controller.dataplane.kernel import KernelDataPlane
from controller.dataplane.kernel_events import KernelEvents
from controller.dataplane.kernel_host import HostSockets
from controller.dataplane.kernel_read import read_links
from controller.dataplane.rtnetlink import NTF_MASTER, NUD_NOARP, NUD_PERMANENT
from controller.model.kernel_state import (
    FdbEntry,
    KernelState,
    LinkState,
    NeighEntry,
    PortFdbEntry,
    VxlanAttrs,
)
from controller.model.naming import (
    OWNER_ALIAS,
    bridge_name,
    veth_host_name,
    veth_peer_name,
    vxlan_name,
)
from controller.model.records import Endpoint, Host, Network
from controller.model.view import HostView, Snapshot, host_view
from controller.plan.kernel_incremental import KernelShortcut
from controller.plan.kernel_ops import (
    AddFlood,
    ConfigureEndpoint,
    DelFdb,
    DelLink,
    DelNeigh,
    DropBridgeGuards,
    EnsureVeth,
    GuardPort,
    PutFdb,
    PutNeigh,
    PutPortFdb,
    UnguardPort,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
]

VNI = 0x4242
BUSYBOX = "/bin/busybox"
H1, H2, H3 = (
    Host("h1", "192.0.2.1"),
    Host("h2", "192.0.2.2", underlay_mtu=1450),
    Host("h3", "192.0.2.3"),
)


def listener(ns: str) -> Callable[..., KernelEvents]:
    """The agent's way of listening to announcements, in namespace ``ns``."""
    return lambda notice, wanted: KernelEvents(ns, notice, wanted).start()


@dataclass(frozen=True)
class Lab:
    host: str  # the throw-away netns that plays the host namespace
    ep_a: str
    ep_b: str
    prefix: str


@pytest.fixture
def lab() -> Iterator[Lab]:
    prefix = f"hdt-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-h", f"{prefix}-a", f"{prefix}-b"]
    created: list[str] = []
    try:
        for name in names:
            netns.create(name)
            created.append(name)
        yield Lab(names[0], names[1], names[2], prefix)
    finally:
        for name in created:
            netns.remove(name)


@pytest.fixture(params=[True, False], ids=["raw-netlink", "pyroute2"])
def fast(request: pytest.FixtureRequest) -> bool:
    """Both entry paths of KernelDataPlane (``fast_netlink``) must behave the same."""
    return bool(request.param)


def snapshot(lab: Lab, *, net: Network | None = None, extra: tuple[Endpoint, ...] = ()) -> Snapshot:
    net = net or Network("blue", VNI, "10.77.0.0/24", gateway="10.77.0.1")
    eps = (
        Endpoint("a", "blue", "h1", "10.77.0.10", "02:42:0a:4d:00:0a", netns=lab.ep_a),
        Endpoint("b", "blue", "h1", "10.77.0.11", "02:42:0a:4d:00:0b", netns=lab.ep_b),
        Endpoint("d", "blue", "h1", "10.77.0.12", "02:42:0a:4d:00:0c"),  # Docker-style
        Endpoint("c", "blue", "h2", "10.77.0.20", "02:42:0a:4d:00:14"),
        Endpoint("e", "blue", "h3", "10.77.0.30", "02:42:0a:4d:00:1e"),
        Endpoint("f", "blue", "h3", "10.77.0.31", "02:42:0a:4d:00:1f"),
        *extra,
    )
    return Snapshot(
        revision=1,
        networks={"blue": net},
        endpoints={(e.network, e.id): e for e in eps},
        hosts={h.name: h for h in (H1, H2, H3)},
    )


def view_of(snap: Snapshot) -> HostView:
    return host_view(snap, H1)


def converge(dp: KernelDataPlane | FakeKernel, view: HostView) -> KernelState:
    dp.apply(dp.plan(view, dp.observe(view)))
    state = dp.observe(view)
    assert dp.plan(view, state) == ()
    return state


def ping(ns: str, ip: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [BUSYBOX, "ping", "-c", "2", "-W", "2", ip],
        preexec_fn=lambda: netns.setns(ns, flags=0),
        capture_output=True,
        timeout=20,
        check=False,
    )


def test_builds_network_as_desired_and_endpoints_ping(lab: Lab, fast: bool) -> None:
    view = view_of(snapshot(lab))
    with (
        KernelDataPlane(H1.vtep, netns=lab.host, fast_netlink=fast) as dp,
        IPRoute(netns=lab.host, flags=0) as ipr,
    ):
        converge(dp, view)
        by_name = {m.get("IFLA_IFNAME"): m for m in ipr.link("dump")}
        br, vx = by_name[bridge_name(VNI)], by_name[vxlan_name(VNI)]
        for m in (br, vx):
            assert m.get("IFLA_IFALIAS") == OWNER_ALIAS
            assert m.get("IFLA_MTU") == 1400  # smallest underlay (h2: 1450) - 50
        br_data = br.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
        assert br_data.get("IFLA_BR_MCAST_SNOOPING") == 0
        vx_data = vx.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
        assert vx_data.get("IFLA_VXLAN_ID") == VNI
        assert vx_data.get("IFLA_VXLAN_PORT") == 4789
        assert vx_data.get("IFLA_VXLAN_LOCAL") == H1.vtep
        assert vx_data.get("IFLA_VXLAN_LEARNING") == 0
        assert vx_data.get("IFLA_VXLAN_PROXY") == 1
        assert vx.get("IFLA_MASTER") == br["index"]
        for ep in ("a", "b", "d"):
            veth = by_name[veth_host_name("blue", ep)]
            assert veth.get("IFLA_MASTER") == br["index"]
            assert veth.get("IFLA_MTU") == 1400
        fdb = {
            (m.get("NDA_LLADDR"), m.get("NDA_DST"))
            for m in ipr.fdb("dump")
            if m["ifindex"] == vx["index"] and m.get("NDA_DST")
        }
        assert fdb == {
            ("02:42:0a:4d:00:14", "192.0.2.2"),
            ("02:42:0a:4d:00:1e", "192.0.2.3"),
            ("02:42:0a:4d:00:1f", "192.0.2.3"),
            ("00:00:00:00:00:00", "192.0.2.2"),
            ("00:00:00:00:00:00", "192.0.2.3"),
        }
        neigh = {
            (m.get("NDA_DST"), m.get("NDA_LLADDR"), m["state"])
            for m in ipr.neigh("dump", family=socket.AF_INET)
            if m["ifindex"] == vx["index"]
        }
        assert neigh == {
            ("10.77.0.20", "02:42:0a:4d:00:14", 0x80),
            ("10.77.0.30", "02:42:0a:4d:00:1e", 0x80),
            ("10.77.0.31", "02:42:0a:4d:00:1f", 0x80),
        }
    with IPRoute(netns=lab.ep_a, flags=0) as ipa:
        eth0 = ipa.link("get", ifname="eth0")[0]
        assert eth0.get("IFLA_ADDRESS") == "02:42:0a:4d:00:0a"
        assert eth0.get("IFLA_MTU") == 1400
        addrs = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipa.addr("dump")}
        assert ("10.77.0.10", 24) in addrs
        routes = [r for r in ipa.route("dump", family=socket.AF_INET) if r["dst_len"] == 0]
        assert [r.get("RTA_GATEWAY") for r in routes] == ["10.77.0.1"]
    result = ping(lab.ep_a, "10.77.0.11")
    assert result.returncode == 0, result.stdout + result.stderr


def test_fdb_entry_deleted_by_hand_is_replanned(lab: Lab, fast: bool) -> None:
    view = view_of(snapshot(lab))
    with (
        KernelDataPlane(H1.vtep, netns=lab.host, fast_netlink=fast) as dp,
        IPRoute(netns=lab.host, flags=0) as ipr,
    ):
        converge(dp, view)
        vx = ipr.link("get", ifname=vxlan_name(VNI))[0]["index"]
        ipr.fdb("del", ifindex=vx, lladdr="02:42:0a:4d:00:14", dst="192.0.2.2")
        ipr.neigh("del", ifindex=vx, dst="10.77.0.30")
        ops = dp.plan(view, dp.observe(view))
        assert PutFdb(vxlan_name(VNI), "02:42:0a:4d:00:14", "192.0.2.2") in ops
        assert len(ops) == 2
        state = converge(dp, view)
        assert FdbEntry("02:42:0a:4d:00:14", "192.0.2.2") in state.fdb[vxlan_name(VNI)]
        assert NeighEntry("10.77.0.30", "02:42:0a:4d:00:1e") in state.neigh[vxlan_name(VNI)]


def test_bridge_learns_nothing_and_holds_a_static_entry_per_mac(lab: Lab, fast: bool) -> None:
    """Learning is off on every port of heddle's bridge and each MAC has a static master entry,
    so traffic leaves no learned entry behind; learning switched on or a static entry deleted
    by hand is put back."""
    view = view_of(snapshot(lab))
    br, vx = bridge_name(VNI), vxlan_name(VNI)
    with (
        KernelDataPlane(H1.vtep, netns=lab.host, fast_netlink=fast) as dp,
        IPRoute(netns=lab.host, flags=0) as ipr,
    ):
        state = converge(dp, view)
        ports = {n for n, lk in state.links.items() if lk.master == br}
        assert ports == {vx, *(veth_host_name("blue", e) for e in ("a", "b", "d"))}
        assert all(state.links[n].learning is False for n in ports)
        assert state.port_fdb[br] == {
            PortFdbEntry("02:42:0a:4d:00:0a", veth_host_name("blue", "a")),
            PortFdbEntry("02:42:0a:4d:00:0b", veth_host_name("blue", "b")),
            PortFdbEntry("02:42:0a:4d:00:0c", veth_host_name("blue", "d")),
            PortFdbEntry("02:42:0a:4d:00:14", vx),
            PortFdbEntry("02:42:0a:4d:00:1e", vx),
            PortFdbEntry("02:42:0a:4d:00:1f", vx),
        }
        result = ping(lab.ep_a, "10.77.0.11")
        assert result.returncode == 0, result.stdout + result.stderr
        br_index = ipr.link("get", ifname=br)[0]["index"]
        learned = [
            m.get("NDA_LLADDR")
            for m in ipr.fdb("dump")
            if m.get("NDA_MASTER") == br_index and not m["state"] & (NUD_NOARP | NUD_PERMANENT)
        ]
        assert learned == []
        a_port = ipr.link("get", ifname=veth_host_name("blue", "a"))[0]["index"]
        ipr.brport("set", index=a_port, learning=1)
        vx_port = ipr.link("get", ifname=vx)[0]["index"]
        ipr.fdb("del", ifindex=vx_port, lladdr="02:42:0a:4d:00:14", flags=NTF_MASTER)
        ops = dp.plan(view, dp.observe(view))
        assert PutPortFdb(vx, "02:42:0a:4d:00:14") in ops
        assert [type(op) for op in ops].count(EnsureVeth) == 1
        state = converge(dp, view)
        assert state.links[veth_host_name("blue", "a")].learning is False


def test_changes_converge_and_removal_leaves_no_owned_object(lab: Lab, fast: bool) -> None:
    snap = snapshot(lab)
    with (
        KernelDataPlane(H1.vtep, netns=lab.host, fast_netlink=fast) as dp,
        IPRoute(netns=lab.host, flags=0) as ipr,
    ):
        ipr.link("add", ifname="hdxyz", kind="bridge")  # looks like ours, is not
        converge(dp, view_of(snap))
        # MTU change, a remote endpoint leaves, a remote MAC moves to another VTEP.
        eps = dict(snap.endpoints)
        del eps["blue", "f"]
        eps["blue", "c"] = replace(eps["blue", "c"], host="h3")
        net = replace(snap.networks["blue"], mtu=1300)
        snap2 = replace(snap, networks={"blue": net}, endpoints=eps)
        state = converge(dp, view_of(snap2))
        assert state.links[vxlan_name(VNI)].mtu == 1300
        assert state.endpoints[lab.ep_a, "eth0"].mtu == 1300
        assert state.fdb[vxlan_name(VNI)] == {
            FdbEntry("02:42:0a:4d:00:14", "192.0.2.3"),
            FdbEntry("02:42:0a:4d:00:1e", "192.0.2.3"),
            FdbEntry("00:00:00:00:00:00", "192.0.2.3"),
        }
        # Everyone leaves: nothing owned remains, the foreign look-alike is untouched.
        empty = replace(snap, endpoints={})
        state = converge(dp, view_of(empty))
        assert [lk.name for lk in state.links.values() if lk.owned] == []
        assert "hdxyz" in state.links
        with IPRoute(netns=lab.ep_a, flags=0) as ipa:
            assert [m.get("IFLA_IFNAME") for m in ipa.link("dump")] == ["lo"]


@pytest.mark.parametrize("kind", ["missing", "not-a-namespace"])
def test_missing_endpoint_netns_fails_that_endpoint_only(lab: Lab, fast: bool, kind: str) -> None:
    """A namespace that does not exist, or a path that is no network namespace (a record may
    name any path): that endpoint fails, everything else converges."""
    ghost = f"{lab.prefix}-g" if kind == "missing" else "/etc/hostname"
    g = Endpoint("g", "blue", "h1", "10.77.0.40", "02:42:0a:4d:00:28", netns=ghost)
    view = view_of(snapshot(lab, extra=(g,)))
    with KernelDataPlane(H1.vtep, netns=lab.host, fast_netlink=fast) as dp:
        with pytest.raises(DataPlaneError) as err:
            dp.apply(dp.plan(view, dp.observe(view)))
        # the veth is born inside its namespace, so creating it is what fails; configuring it
        # is skipped as dependent
        assert [type(op) for op, _ in err.value.failures] == [EnsureVeth]
        assert [type(op) for op in err.value.skipped] == [GuardPort, ConfigureEndpoint, PutPortFdb]
        assert ghost in str(err.value)
        if kind == "missing":
            assert not os.path.exists(f"/run/netns/{ghost}")  # never created by accident (K1)
        ops = dp.plan(view, dp.observe(view))
        assert ops == (err.value.op, *err.value.skipped)  # everything else converged
    assert ping(lab.ep_a, "10.77.0.11").returncode == 0


@pytest.mark.parametrize("where", ["inside", "host"])
def test_a_name_taken_by_someone_else_is_refused_never_adopted(
    lab: Lab, fast: bool, where: str
) -> None:
    """The endpoint's interface name inside its namespace, or its veth's name on the host, is
    already someone else's link: that endpoint fails naming it, nothing half-made stays, the
    foreign link is untouched, everything else converges."""
    view = view_of(snapshot(lab))
    ns, name = (lab.ep_a, "eth0") if where == "inside" else (lab.host, veth_host_name("blue", "a"))
    subprocess.run(["ip", "-n", ns, "link", "add", name, "type", "bridge"], check=True)
    with KernelDataPlane(H1.vtep, netns=lab.host, fast_netlink=fast) as dp:
        with pytest.raises(DataPlaneError) as err:
            dp.apply(dp.plan(view, dp.observe(view)))
        assert [type(op) for op, _ in err.value.failures] == [EnsureVeth]
        assert "not owned by heddle" in str(err.value) and name in str(err.value)
        state = dp.observe(view)
        assert veth_peer_name("blue", "a") not in state.links
        if where == "inside":
            assert veth_host_name("blue", "a") not in state.links, "a half-made pair stayed"
        assert dp.plan(view, state) == (err.value.op, *err.value.skipped)
    shown = subprocess.run(["ip", "-n", ns, "-d", "link", "show", name], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert "bridge" in shown and "alias" not in shown, "the foreign link was touched"


def _normalise(state: KernelState) -> KernelState:
    """Drop what the kernel assigns (ifindex, MACs it generates) and foreign links."""
    links: dict[str, LinkState] = {}
    for name, lk in state.links.items():
        # the peer MAC is ours, and so is an egress bridge's (it holds an address)
        keep_mac = name.startswith("hdp") or name in state.bridge_addresses
        links[name] = replace(lk, index=0, mac=lk.mac if keep_mac else "")
    return replace(state, links=links)


def test_contract_fake_and_kernel_end_in_equal_states(lab: Lab, fast: bool) -> None:
    snap = snapshot(lab)
    eps = dict(snap.endpoints)
    del eps["blue", "e"]
    blue = snap.networks["blue"]
    egress = replace(snap, networks={"blue": replace(blue, egress="masquerade")})
    steps = [
        view_of(snap),
        view_of(egress),  # the gateway on the bridge, forwarding, the rules
        view_of(replace(egress, endpoints=eps)),
        view_of(replace(snap, endpoints=eps)),  # and egress off again
        view_of(replace(snap, endpoints={})),
    ]
    fake = FakeKernel(H1.vtep, netns=(lab.ep_a, lab.ep_b))
    with KernelDataPlane(H1.vtep, netns=lab.host, fast_netlink=fast) as dp:
        for view in steps:
            real_state = converge(dp, view)
            fake_state = converge(fake, view)
            assert _normalise(real_state) == _normalise(fake_state)
            if any(nv.network.egress for nv in view.networks):
                assert real_state.bridge_addresses == {bridge_name(VNI): ("10.77.0.1/24",)}
                assert real_state.forwarding is True
                assert real_state.filters is not None and real_state.filters.gateways
            # what the metrics and `heddle trace` read agree too, and the inventory counts
            # what the kernel really holds
            assert dp.inventory(view, real_state) == _counted(real_state)
            assert fake.inventory(view, fake_state) == _counted(fake_state)
            for nv in view.networks:
                name = nv.network.name
                assert fake.facts(view, name, fake_state) == dp.facts(view, name, real_state)


def _counted(state: KernelState) -> dict[str, int]:
    return {
        "bridges": sum(1 for lk in state.links.values() if lk.owned and lk.kind == "bridge"),
        "vxlan": sum(1 for lk in state.links.values() if lk.owned and lk.kind == "vxlan"),
        "veths": sum(1 for n, lk in state.links.items() if lk.owned and n.startswith("hdv")),
        "fdb": sum(len(entries) for entries in state.fdb.values()),
        "neigh": sum(len(entries) for entries in state.neigh.values()),
    }


def test_entry_ops_report_per_op_results(lab: Lab, fast: bool) -> None:
    view = view_of(snapshot(lab))
    vx = vxlan_name(VNI)
    with KernelDataPlane(H1.vtep, netns=lab.host, fast_netlink=fast) as dp:
        converge(dp, view)
        good = PutNeigh(vx, "10.77.0.99", "02:42:0a:4d:00:63")
        with pytest.raises(DataPlaneError) as err:
            dp.apply(
                [
                    PutFdb("hdxnope", "02:42:0a:4d:00:63", "192.0.2.9"),  # no such device
                    DelFdb(vx, "02:42:0a:4d:00:99", "192.0.2.9"),  # absent: fine
                    DelNeigh(vx, "10.77.0.98"),  # absent: fine
                    AddFlood(vx, "192.0.2.2"),  # present already: fine
                    good,
                ]
            )
        assert [op for op, _ in err.value.failures] == [
            PutFdb("hdxnope", "02:42:0a:4d:00:63", "192.0.2.9")
        ]
        state = dp.observe(view)
        assert NeighEntry("10.77.0.99", "02:42:0a:4d:00:63") in state.neigh[vx]
        assert dp.plan(view, state) == (DelNeigh(vx, "10.77.0.99"),)


def test_link_deletes_go_together_and_spare_what_is_not_ours(lab: Lab, fast: bool) -> None:
    """A run of DelLink ops is one kernel operation on the raw path (a device group); a link
    that is not heddle's in the run is refused and keeps its group, an absent one is fine."""
    view = view_of(snapshot(lab))
    with (
        KernelDataPlane(H1.vtep, netns=lab.host, fast_netlink=fast) as dp,
        IPRoute(netns=lab.host, flags=0) as ipr,
    ):
        state = converge(dp, view)
        ipr.link("add", ifname="hdxforeign", kind="bridge")
        ours = sorted(n for n, lk in state.links.items() if lk.owned)
        assert len(ours) >= 4  # bridge, VXLAN device, veths
        ops = [DelLink(n) for n in ours[:2]] + [DelLink("hdxforeign"), DelLink("hdxgone")]
        ops += [DelLink(n) for n in ours[2:]]
        with pytest.raises(DataPlaneError) as err:
            dp.apply(ops)
        assert [op for op, _ in err.value.failures] == [DelLink("hdxforeign")]
        left = {m.get("IFLA_IFNAME"): m for m in ipr.link("dump")}
        assert not set(ours) & left.keys()
        assert left["hdxforeign"].get("IFLA_GROUP") == 0
        converge(dp, view)  # and it all comes back


def test_endpoint_ttl_rereads_namespaces_after_it_expires(lab: Lab) -> None:
    """With ``endpoint_ttl`` an endpoint namespace is read again once the TTL has passed (the
    agent's resync), while host-side drift is seen at every pass."""
    import time

    view = view_of(snapshot(lab))
    with (
        KernelDataPlane(H1.vtep, netns=lab.host, endpoint_ttl=0.5) as dp,
        IPRoute(netns=lab.ep_a, flags=0) as ipa,
        IPRoute(netns=lab.host, flags=0) as ipr,
    ):
        converge(dp, view)
        eth0 = ipa.link("get", ifname="eth0")[0]["index"]
        ipa.link("set", index=eth0, mtu=1300)  # drift inside the endpoint's namespace
        vx = ipr.link("get", ifname=vxlan_name(VNI))[0]["index"]
        ipr.fdb("del", ifindex=vx, lladdr="02:42:0a:4d:00:14", dst="192.0.2.2")
        ops = dp.plan(view, dp.observe(view))
        assert ops == (PutFdb(vxlan_name(VNI), "02:42:0a:4d:00:14", "192.0.2.2"),)
        dp.apply(ops)
        time.sleep(0.6)
        ops = dp.plan(view, dp.observe(view))
        assert [type(op) for op in ops] == [ConfigureEndpoint]
        converge(dp, view)
        assert ipa.link("get", ifname="eth0")[0].get("IFLA_MTU") == view.networks[0].mtu


def test_endpoint_ttl_remembers_the_filters_it_wrote(lab: Lab) -> None:
    """With ``endpoint_ttl`` the driver remembers heddle's tables (what it read, or the last
    ``SyncFilters`` it applied) instead of listing them on every pass: a change of membership
    is planned and applied against the remembered tables and yields a clean state; tables
    deleted behind its back are rewritten once the TTL has passed (the agent's resync)."""
    import time

    from controller.dataplane.nftables import Nft
    from controller.model.nft_filter import LIST_TABLES, ours, render_delete

    snap = snapshot(lab)
    eps = dict(snap.endpoints)
    del eps["blue", "e"]  # h3 keeps endpoint d: a membership that shrinks, not one that goes
    with KernelDataPlane(H1.vtep, netns=lab.host, endpoint_ttl=0.5) as dp:
        converge(dp, view_of(snap))
        smaller = view_of(replace(snap, endpoints=eps))
        converge(dp, smaller)
        nft = Nft(lab.host)
        try:
            nft.run(render_delete(ours(nft.run(LIST_TABLES))))
            assert dp.plan(smaller, dp.observe(smaller)) == ()  # remembered, not read
            time.sleep(0.6)
            ops = dp.plan(smaller, dp.observe(smaller))
            assert {type(op).__name__ for op in ops} == {"SyncFilters", "GuardPort"}
            dp.apply(ops)
        finally:
            nft.close()
    with KernelDataPlane(H1.vtep, netns=lab.host) as fresh:  # what the kernel really holds
        assert fresh.plan(smaller, fresh.observe(smaller)) == ()


def test_an_earlier_releases_per_network_filter_sets_go_in_one_sync(lab: Lab) -> None:
    """Earlier releases kept a rule and a set ``vni_<VNI>`` per network in ``inet heddle``: the
    first pass of this release replaces them with the members' rule in one ``SyncFilters``
    (one atomic batch: the filter never lapses), and the next pass changes nothing."""
    view = view_of(snapshot(lab))
    with KernelDataPlane(H1.vtep, netns=lab.host) as dp:
        converge(dp, view)
    legacy = f"""add set inet heddle vni_{VNI} {{ type ipv4_addr; elements = {{ 192.0.2.2 }}; }}
insert rule inet heddle input udp dport 4789 @th,96,24 {VNI} ip saddr @vni_{VNI} accept
"""
    subprocess.run(["ip", "netns", "exec", lab.host, "nft", "-f", "-"], input=legacy.encode(),
                   check=True)  # fmt: skip
    with KernelDataPlane(H1.vtep, netns=lab.host) as dp:
        ops = dp.plan(view, dp.observe(view))
        assert [(type(op).__name__, getattr(op, "stale_vnis", None)) for op in ops] == [
            ("SyncFilters", (VNI,))
        ]
        dp.apply(ops)
        assert dp.plan(view, dp.observe(view)) == ()
    argv = ["ip", "netns", "exec", lab.host, "nft", "list", "table", "inet", "heddle"]
    listed = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert "vni_" not in listed and "@th,96,24 . ip saddr" in listed


def test_a_leaving_endpoint_takes_only_its_own_guard_chain(lab: Lab) -> None:
    """A local endpoint leaving deletes its port's chain after its veth, and touches no other
    port's (their rules keep their handles). Deleting a chain that is already gone (Linux 6.1
    takes it with its device) succeeds; a chain deleted behind the agent's back is written
    again at the next observation."""
    snap = snapshot(lab)
    eps = dict(snap.endpoints)
    del eps["blue", "b"]
    full, smaller = view_of(snap), view_of(replace(snap, endpoints=eps))
    port_a, port_b = veth_host_name("blue", "a"), veth_host_name("blue", "b")
    argv = ["ip", "netns", "exec", lab.host, "nft", "-a", "list", "table", "netdev", "heddle"]

    def handles() -> list[str]:
        listed = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        return [line.split("# handle")[1] for line in listed.splitlines() if "accept #" in line]

    with KernelDataPlane(H1.vtep, netns=lab.host) as dp:
        converge(dp, full)
        before = handles()
        ops = dp.plan(smaller, dp.observe(smaller))
        assert UnguardPort(port_b) in ops and not any(isinstance(op, GuardPort) for op in ops)
        dp.apply(ops)
        assert set(dp.observe(smaller).guards) == {port_a, veth_host_name("blue", "d")}
        assert set(before) > set(handles())
        dp.apply([UnguardPort(port_b)])  # already gone: success
        subprocess.run(["ip", "netns", "exec", lab.host, "nft", "delete", "chain", "netdev",
                        "heddle", f"g_{port_a}"], check=True)  # fmt: skip
        ops = dp.plan(smaller, dp.observe(smaller))
        assert [type(op) for op in ops] == [GuardPort] and ops[0].port == port_a  # type: ignore[union-attr]
        dp.apply(ops)
        assert dp.plan(smaller, dp.observe(smaller)) == ()


def test_an_earlier_releases_bridge_guards_are_replaced_without_a_gap(lab: Lab) -> None:
    """Upgrading from the release that guarded ports in one ``bridge heddle`` chain: the first
    pass writes every port's own chain, then drops the old table; the next plans nothing."""
    view = view_of(snapshot(lab))
    with KernelDataPlane(H1.vtep, netns=lab.host) as dp:
        converge(dp, view)
    old = """delete table netdev heddle
table bridge heddle {
  counter spoof_dropped {}
  chain prerouting { type filter hook prerouting priority -200; policy accept; }
}
"""
    subprocess.run(["ip", "netns", "exec", lab.host, "nft", "-f", "-"], input=old.encode(),
                   check=True)  # fmt: skip
    with KernelDataPlane(H1.vtep, netns=lab.host) as dp:
        ops = dp.plan(view, dp.observe(view))
        kinds = [type(op) for op in ops]
        assert set(kinds) == {GuardPort, DropBridgeGuards} and kinds[-1] is DropBridgeGuards
        dp.apply(ops)
        assert dp.plan(view, dp.observe(view)) == ()
    argv = ["ip", "netns", "exec", lab.host, "nft", "list", "tables"]
    listed = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert "bridge heddle" not in listed and "netdev heddle" in listed


def test_raw_link_dump_reads_what_pyroute2_reads(lab: Lab) -> None:
    """The raw link codec (``fast_netlink``) and pyroute2 report every ``hd*`` link the same:
    bridges, VXLAN devices, veths in and out of bridges, a foreign link, learning on and off."""
    view = view_of(snapshot(lab))
    with (
        KernelDataPlane(H1.vtep, netns=lab.host, fast_netlink=True) as raw,
        IPRoute(netns=lab.host, flags=0) as ipr,
    ):
        converge(raw, view)
        ipr.link("add", ifname="hdforeign", kind="bridge")  # not ours: reported, not owned
        port = ipr.link("get", ifname=veth_host_name("blue", "a"))[0]["index"]
        ipr.brport("set", index=port, learning=1)
        sockets = HostSockets(lab.host)
        try:
            links = read_links(sockets, fast=True)
            assert links == read_links(sockets, fast=False)
        finally:
            sockets.close()
        assert links["hdforeign"].owned is False and links["hdforeign"].kind == "bridge"
        assert links[veth_host_name("blue", "a")].learning is True
        assert links[vxlan_name(VNI)].vxlan == VxlanAttrs(VNI, H1.vtep, 4789, False, True)
        assert links[bridge_name(VNI)].mcast_snooping is False


def test_incremental_passes_keep_the_invariant_on_the_real_kernel(lab: Lab) -> None:
    """Incremental over the real kernel driver, 60 random rounds of remote changes (added,
    moved, removed) and local ones (links: planned without reading the kernel): after every
    pass a fresh driver's full observation plans nothing, and most passes never read the
    kernel."""
    rng = random.Random(1107)
    dp = Incremental(
        KernelDataPlane(H1.vtep, netns=lab.host), KernelShortcut(), ttl=3600.0,
        listen=listener(lab.host),
    )  # fmt: skip
    fresh = KernelDataPlane(H1.vtep, netns=lab.host)
    nets = {n: Network(n, 0x4300 + k, f"10.{78 + k}.0.0/24") for k, n in enumerate(("n0", "n1"))}
    eps: dict[tuple[str, str], Endpoint] = {
        (n, "loc"): Endpoint("loc", n, "h1", f"10.{78 + k}.0.2", f"02:43:0a:{78 + k:02x}:00:02")
        for k, n in enumerate(nets)
    }
    unread = 0
    try:
        for _ in range(60):
            for _ in range(rng.randint(1, 3)):
                k, last = rng.randrange(2), rng.randint(10, 25)
                net = f"n{k}"
                roll = rng.random()
                if roll < 0.3:
                    eps.pop((net, f"e{last}"), None)
                else:
                    host = "h1" if roll > 0.85 else rng.choice(("h2", "h3"))
                    ip = f"10.{78 + k}.0.{last}"
                    ns = lab.ep_a if host == "h1" and k == 0 else None
                    mac = f"02:43:0a:{78 + k:02x}:00:{last:02x}"
                    eps[(net, f"e{last}")] = Endpoint(
                        f"e{last}", net, host, ip, mac, ns, f"eth{last}"
                    )
            snap = Snapshot(1, nets, dict(eps), {h.name: h for h in (H1, H2, H3)})
            view = host_view(snap, H1)
            actual = dp.observe(view)
            unread += not dp.observed_in_full
            ops = dp.plan(view, actual)
            if ops:
                dp.apply(ops)
            assert fresh.plan(view, fresh.observe(view)) == (), "not converged"
        assert unread >= 30, (unread, dp.incremental_passes, dp.full_passes)
        # every announcement of the agent's own applies agreed with what it remembered
        assert dp.drifts == 0
    finally:
        dp.close()
        fresh.close()


def test_a_change_made_by_someone_else_is_announced_and_repaired_at_once(lab: Lab) -> None:
    """The kernel's announcements keep the remembered state true: an FDB entry deleted and a
    neighbour entry rewritten by hand wake the agent (``on_drift``), and the next pass reads
    the kernel and repairs them -- without waiting for the periodic resync."""
    woken = threading.Event()
    dp = Incremental(
        KernelDataPlane(H1.vtep, netns=lab.host), KernelShortcut(), ttl=3600.0,
        on_drift=woken.set, listen=listener(lab.host),
    )  # fmt: skip
    fresh = KernelDataPlane(H1.vtep, netns=lab.host)
    net = Network("blue", VNI, "10.77.0.0/24")
    eps = {
        ("blue", "a"): Endpoint("a", "blue", "h1", "10.77.0.10", "02:42:0a:4d:00:0a", lab.ep_a),
        ("blue", "r"): Endpoint("r", "blue", "h2", "10.77.0.20", "02:42:0a:4d:00:14"),
    }
    view = host_view(Snapshot(1, {"blue": net}, eps, {h.name: h for h in (H1, H2, H3)}), H1)

    def run_pass() -> int:
        ops = dp.plan(view, dp.observe(view))
        if ops:
            dp.apply(ops)
        return len(ops)

    try:
        run_pass()
        assert run_pass() == 0 and not woken.is_set()  # converged, remembered, no drift
        assert dp.plan(view, dp.observe(view)) == () and not dp.observed_in_full
        for change in (
            ("bridge", "fdb", "del", "02:42:0a:4d:00:14", "dev", vxlan_name(VNI),
             "dst", H2.vtep, "self"),
            ("ip", "neigh", "replace", "10.77.0.20", "lladdr", "02:00:00:00:00:99",
             "dev", vxlan_name(VNI), "nud", "permanent"),
        ):  # fmt: skip
            woken.clear()
            subprocess.run(["ip", "netns", "exec", lab.host, *change], check=True)
            assert woken.wait(5), f"no drift noticed after {change}"
            assert run_pass() > 0 and dp.observed_in_full  # read afresh and repaired
            assert fresh.plan(view, fresh.observe(view)) == ()
            assert run_pass() == 0
        assert dp.drifts == 2
    finally:
        dp.close()
        fresh.close()


def test_announcements_held_during_an_apply_come_after_it_in_order(lab: Lab) -> None:
    """While held (an apply in progress), announcements are read but not passed on; on
    release they all are, in the order the kernel made them, and ``sync`` covers them."""
    seen: list[str] = []
    got = threading.Event()

    def sink(sightings: object) -> None:
        for s in sightings or ():  # type: ignore[attr-defined]
            seen.append(f"{s.name}:{'up' if s.link is not None else 'gone'}")
        got.set()

    ev = KernelEvents(lab.host, sink).start()
    name = "hdv-held0"
    try:
        ev.hold()
        run = ["ip", "netns", "exec", lab.host, "ip", "link"]
        subprocess.run([*run, "add", name, "type", "veth", "peer", "name", "hdv-held1"], check=True)
        subprocess.run([*run, "del", name], check=True)
        time.sleep(0.2)  # the listener has read both by now
        assert not got.is_set() and seen == [], "passed on while held"
        ev.release()
        assert got.wait(5), "nothing passed on after release"
        assert ev.sync()
        assert [x for x in seen if x.startswith(name)][-1] == f"{name}:gone"
    finally:
        ev.stop()
        subprocess.run(["ip", "netns", "exec", lab.host, "ip", "link", "del", name],
                       capture_output=True)  # fmt: skip


def _six(ep: Endpoint, only: bool) -> Endpoint:
    """``ep`` with an IPv6 address beside (or, ``only``, instead of) its IPv4 one."""
    ip6 = f"fd00:77::{ep.ip.rsplit('.', 1)[1]}" if ep.ip else None
    return replace(ep, ip=None if only else ep.ip, ip6=ip6)


@pytest.mark.parametrize("only", [False, True], ids=["dual-stack", "ipv6-only"])
def test_ipv6_endpoints_get_addresses_routes_neighbours_and_guards(
    lab: Lab, fast: bool, only: bool
) -> None:
    """An IPv6 network's endpoints get their address (no DAD: usable at once) and default
    route, the VXLAN device a permanent IPv6 neighbour entry per remote address (its proxy
    answers neighbour solicitations from them), the bridge table an IPv6 guard per local
    address; the fake ends in the same state, a second plan is empty, and the endpoints ping
    each other over IPv6 even with IPv6 off in every namespace's defaults (the host's too: the
    VXLAN device would refuse IPv6 neighbour entries)."""
    net = Network("blue", VNI, None if only else "10.77.0.0/24", None if only else "10.77.0.1",
                  mtu=1400, subnet6="fd00:77::/64", gateway6="fd00:77::1")  # fmt: skip
    base = snapshot(lab)
    snap = replace(
        base,
        networks={"blue": net},
        endpoints={k: _six(e, only) for k, e in base.endpoints.items()},
    )
    for ns in (lab.host, lab.ep_a, lab.ep_b):  # as hardened hosts, some runtimes and the lab
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)  # fmt: skip
    view = view_of(snap)
    fake = FakeKernel(H1.vtep, netns=(lab.ep_a, lab.ep_b))
    with KernelDataPlane(H1.vtep, netns=lab.host, fast_netlink=fast) as dp:
        real_state = converge(dp, view)
        assert _normalise(real_state) == _normalise(converge(fake, view))
        assert real_state.neigh[vxlan_name(VNI)] >= {
            NeighEntry("fd00:77::20", "02:42:0a:4d:00:14"),
            NeighEntry("fd00:77::30", "02:42:0a:4d:00:1e"),
        }
        assert real_state.filters is not None
        guarded6 = {g.ip for gs in real_state.guards.values() for g in gs if g.six}
        assert guarded6 == {"fd00:77::10", "fd00:77::11", "fd00:77::12"}  # d: Docker-style
        side = real_state.endpoints[lab.ep_a, "eth0"]
        assert "fd00:77::10/64" in side.addresses and side.gateway6 == "fd00:77::1"
        assert (side.gateway is None) == only
    with IPRoute(netns=lab.ep_a, flags=0) as ipa:
        six = [a for a in ipa.addr("dump", family=socket.AF_INET6) if a["scope"] == 0]
        assert [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in six] == [("fd00:77::10", 64)]
        assert six[0]["flags"] & 0x02  # IFA_F_NODAD
    result = subprocess.run(
        [BUSYBOX, "ping", "-6", "-c", "2", "-W", "2", "fd00:77::11"],
        preexec_fn=lambda: netns.setns(lab.ep_a, flags=0), capture_output=True, timeout=20,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with KernelDataPlane(H1.vtep, netns=lab.host, fast_netlink=fast) as dp:
        empty = view_of(replace(snap, endpoints={}))
        state = converge(dp, empty)
        assert not [n for n, lk in state.links.items() if lk.owned]

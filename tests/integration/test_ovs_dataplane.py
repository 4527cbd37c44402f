"""OvsDataPlane against a private Open vSwitch (``netdev`` datapath) in throw-away namespaces.

Per test: netns ``hdo-<random>-h`` plays the host (its own ``ovsdb-server`` + ``ovs-vswitchd``
run inside it, from ``controller.lab.ovs``, in a private directory), ``-a``/``-b`` are two local
endpoints, and ``-u`` is a second host on the underlay (``ul0`` <-> ``ulp``) run by the *kernel*
backend with one real endpoint ``-c``: so the tests also cross VXLAN between the two backends.
A third member host (h3, 192.0.2.3) does not exist: its endpoints are fake remote endpoints.
The fixture stops OVS by PID and deletes the namespaces (with every link in them) even on
failure; the root namespace and the system OVS are never touched.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from controller.dataplane.backend import DataPlaneError
from controller.dataplane.fake_ovs import FakeOvs
from controller.dataplane.incremental import Incremental
from controller.dataplane.kernel import KernelDataPlane
from controller.dataplane.kernel_events import KernelEvents
from controller.dataplane.ovs import OvsDataPlane
from controller.dataplane.ovs_host import set_tx_checksum, tx_checksum
from controller.lab import ovs as lab_ovs
from controller.lab.capture import capturing, classify, ipv4_from
from controller.lab.nsutil import call_in_netns
from controller.lab.pinger import PingResult, ping
from controller.lab.probes import forge_neighbour, wait_ping
from controller.model.flow import COOKIE
from controller.model.naming import veth_host_name
from controller.model.ovs_state import OvsState
from controller.model.records import Endpoint, Host, Network
from controller.model.view import HostView, Snapshot, host_view
from controller.plan.flows import T_ARP
from controller.plan.ovs_incremental import OvsShortcut
from controller.plan.ovs_ops import (
    AwaitOvsPort,
    BeginFlowRestore,
    EndFlowRestore,
    EnsureOvsPort,
    ModFlows,
    ReplaceFlows,
    ResolveVteps,
)
from controller.plan.ovsdb import TUNNEL_OFPORT, TUNNEL_OPTIONS, OvsLayout
from controller.reconcile.loop import Reconciler
from controller.reconcile.trigger import Trigger

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and OVS daemons"),
    pytest.mark.skipif(
        shutil.which("ovs-vswitchd") is None, reason="apt-get install openvswitch-switch"
    ),
]

BUSYBOX = "/bin/busybox"
VNI = 0x4242
H1 = Host("h1", "192.0.2.1", backend="ovs")
H2 = Host("h2", "192.0.2.2")
H3 = Host("h3", "192.0.2.3", backend="ovs")
MAC_A, MAC_B, MAC_C = "02:42:0a:4d:00:0a", "02:42:0a:4d:00:0b", "02:42:0a:4d:00:14"


def listener(ns: str) -> Callable[..., KernelEvents]:
    """The agent's way of listening to announcements, in namespace ``ns``."""
    return lambda notice, wanted: KernelEvents(ns, notice, wanted).start()


@dataclass(frozen=True)
class Lab:
    prefix: str
    host: str  # runs OVS, managed by OvsDataPlane
    ep_a: str
    ep_b: str
    peer: str  # second underlay host, kernel backend
    ep_c: str
    ovs: lab_ovs.OvsInstance


def _veth_to(host: str, name: str, peer_ns: str, peer_name: str) -> None:
    with IPRoute(netns=host, flags=0) as ipr:
        ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer_name, "net_ns_fd": peer_ns})


def _address(ns: str, dev: str, address: str, prefixlen: int) -> None:
    with IPRoute(netns=ns, flags=0) as ipr:
        idx = ipr.link_lookup(ifname=dev)[0]
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
        ipr.link("set", index=idx, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


@pytest.fixture
def lab() -> Iterator[Lab]:
    prefix = f"hdo-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{s}" for s in ("h", "a", "b", "u", "c")]
    created: list[str] = []
    inst: lab_ovs.OvsInstance | None = None
    workdir = Path(f"/tmp/{prefix}")
    try:
        for name in names:
            netns.create(name)
            created.append(name)
        host, ep_a, ep_b, peer, ep_c = names
        _veth_to(host, "ul0", peer, "ulp")
        _address(host, "ul0", H1.vtep, 24)
        _address(peer, "ulp", H2.vtep, 24)
        # veths never finalise checksums: without this the kernel peer's VXLAN packets reach
        # ul0 with a partial outer UDP checksum, and the userspace datapath drops them (a lab
        # artefact: a real NIC finalises checksums on the wire).
        set_tx_checksum(peer, "ulp", on=False)
        inst = lab_ovs.start(host, workdir)
        yield Lab(prefix, host, ep_a, ep_b, peer, ep_c, inst)
    finally:
        if inst is not None:
            inst.stop(remove_workdir=True)
        shutil.rmtree(workdir, ignore_errors=True)
        for name in created:
            netns.remove(name)


def snapshot(lab: Lab, *, drop: tuple[str, ...] = (), rev: int = 1) -> Snapshot:
    net = Network("blue", VNI, "10.77.0.0/24")
    eps: tuple[Endpoint, ...] = (
        Endpoint("a", "blue", "h1", "10.77.0.10", MAC_A, netns=lab.ep_a),
        Endpoint("b", "blue", "h1", "10.77.0.11", MAC_B, netns=lab.ep_b),
        Endpoint("c", "blue", "h2", "10.77.0.20", MAC_C, netns=lab.ep_c),
        Endpoint("e", "blue", "h3", "10.77.0.30", "02:42:0a:4d:00:1e"),
        Endpoint("f", "blue", "h3", "10.77.0.31", "02:42:0a:4d:00:1f"),
    )
    eps = tuple(e for e in eps if e.id not in drop)
    return Snapshot(
        revision=rev,
        networks={"blue": net},
        endpoints={(e.network, e.id): e for e in eps},
        hosts={h.name: h for h in (H1, H2, H3)},
    )


def dataplane(lab: Lab, on_change: Callable[[], None] | None = None) -> OvsDataPlane:
    return OvsDataPlane(
        H1.vtep,
        ovsdb=lab.ovs.db_url,
        datapath="netdev",
        underlay_dev="ul0",
        netns=lab.host,
        on_change=on_change,
    )


def converge(dp: OvsDataPlane, view: HostView) -> OvsState:
    dp.apply(dp.plan(view, dp.observe(view)))
    state = dp.observe(view)
    assert dp.plan(view, state) == ()
    return state


@contextlib.contextmanager
def peer_host(lab: Lab, snap: Snapshot) -> Iterator[KernelDataPlane]:
    """h2: the kernel backend in the peer namespace, converged on ``snap``."""
    kdp = KernelDataPlane(H2.vtep, netns=lab.peer)
    try:
        view = host_view(snap, H2)
        kdp.apply(kdp.plan(view, kdp.observe(view)))
        yield kdp
    finally:
        kdp.close()


def busybox(ns: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BUSYBOX, *args],
        preexec_fn=lambda: netns.setns(ns, flags=0),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, timeout=10)


def tcp_echo(lab: Lab, server_ns: str, client_ns: str, server_ip: str) -> bytes:
    """One TCP round trip (connect, send 64 KiB, read it back): breaks when checksums do."""
    srv = call_in_netns(server_ns, lambda: socket.create_server((server_ip, 0)))
    port = srv.getsockname()[1]
    payload = os.urandom(65536)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                got = b""
                while len(got) < len(payload):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                conn.sendall(got)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        cli = call_in_netns(client_ns, lambda: socket.create_connection((server_ip, port), 5))
        with cli:
            cli.settimeout(5)
            cli.sendall(payload)
            back = b""
            while len(back) < len(payload):
                chunk = cli.recv(65536)
                if not chunk:
                    break
                back += chunk
        return back if back == payload else b"mismatch"
    finally:
        srv.close()
        t.join(timeout=5)


# -- tests ----------------------------------------------------------------------------------------


def test_builds_bridge_ports_flows_and_underlay_as_desired(lab: Lab) -> None:
    view = host_view(snapshot(lab), H1)
    with dataplane(lab) as dp:
        state = converge(dp, view)
    br = state.ovsdb.bridges["br-heddle"]
    assert br.owned and br.fail_mode == "secure" and br.datapath_type == "netdev"
    tunnel = br.ports["hdvxlan"]
    assert (tunnel.type, tunnel.options, tunnel.ofport) == ("vxlan", TUNNEL_OPTIONS, TUNNEL_OFPORT)
    port_a = br.ports[veth_host_name("blue", "a")]
    assert (port_a.network, port_a.endpoint, port_a.owned) == ("blue", "a", True)
    assert port_a.ofport == port_a.ofport_request == 10
    assert br.ports[veth_host_name("blue", "b")].ofport == 11
    phy = state.ovsdb.bridges["br-phy"]
    assert phy.owned and phy.hwaddr == "02:68:c0:00:02:01" and phy.ports["ul0"].ofport == 1
    assert state.ovsdb.flow_restore_wait and not br.restore_pending
    # every flow is ours and is exactly the rendered table
    dump = lab.ovs.ofctl("-O", "OpenFlow14", "dump-flows", "--no-stats", "br-heddle")
    assert all(f"cookie={COOKIE:#x}" in line for line in dump.splitlines() if "actions=" in line)
    assert len(state.flows["br-heddle"]) == len(dump.splitlines())
    # the underlay: VTEP moved from ul0 to br-phy, ul0 without ARP
    assert state.underlay is not None
    assert state.underlay.phy_addresses == {"192.0.2.1/24"} and state.underlay.phy_up
    assert not state.underlay.nic_addresses and state.underlay.nic_noarp
    assert "192.0.2.0/24 dev br-phy SRC 192.0.2.1" in lab.ovs.appctl("ovs/route/show")
    # endpoint sides: configured by the kernel backend's op, TX checksum offload off
    assert tx_checksum(lab.ep_a, "eth0") is False
    side = state.kernel.endpoints[lab.ep_a, "eth0"]
    assert side.mac == MAC_A and "10.77.0.10/24" in side.addresses and side.mtu == 1450


def test_local_and_cross_backend_traffic_arp_answered_in_flows(lab: Lab) -> None:
    snap = snapshot(lab)
    view = host_view(snap, H1)
    with dataplane(lab) as dp, peer_host(lab, snap):
        converge(dp, view)
        assert wait_ping(lab.ep_a, "10.77.0.11", timeout=10) is not None, "local a -> b"
        assert tcp_echo(lab, lab.ep_b, lab.ep_a, "10.77.0.11") != b"mismatch"
        with capturing("ulp", lab.peer, promisc=True) as cap:
            assert wait_ping(lab.ep_a, "10.77.0.20", timeout=15) is not None, "ovs a -> kernel c"
            assert wait_ping(lab.ep_c, "10.77.0.11", timeout=15) is not None, "kernel c -> ovs b"
            assert tcp_echo(lab, lab.ep_c, lab.ep_a, "10.77.0.20") != b"mismatch"
            # ARP for a remote endpoint on a host that does not even exist: answered by flows
            arp = busybox(lab.ep_a, "arping", "-c", "1", "-w", "2", "-I", "eth0", "10.77.0.30")
            assert "02:42:0a:4d:00:1e" in arp.stdout.lower(), arp.stdout + arp.stderr
        vteps = frozenset({H1.vtep, H2.vtep, H3.vtep})
        kinds = [classify(f, vteps) for f in cap.frames]
        assert sum(1 for kind, problem in kinds if kind == "vxlan" and problem is None) > 0
        inner_arp = [p for _, p in kinds if p is not None and "ARP inside VXLAN" in p]
        assert not inner_arp, "no ARP crosses the underlay inside VXLAN"
        dump = lab.ovs.ofctl("-O", "OpenFlow14", "dump-flows", "br-heddle", f"table={T_ARP}")
        answered = [ln for ln in dump.splitlines() if "arp_tpa=10.77.0.30" in ln]
        assert answered and "n_packets=0," not in answered[0]


def _broadcast_from(ns: str, src: str, count: int = 3) -> None:
    """``count`` UDP datagrams from ``src`` to the subnet's broadcast address, inside ``ns``."""

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind((src, 0))
            for _ in range(count):
                sock.sendto(b"heddle-flood", ("10.77.0.255", 9))

    call_in_netns(ns, send)


def test_broadcast_reaches_every_other_member_and_never_returns_to_its_sender(lab: Lab) -> None:
    """One flood flow per network (controller/plan/flows.py): the switch itself skips the
    input port, so a local sender's broadcast reaches the other local endpoint and, through
    the tunnel, the kernel host's endpoint -- and never comes back to the sender."""
    snap = snapshot(lab)
    with dataplane(lab) as dp, peer_host(lab, snap):
        converge(dp, host_view(snap, H1))
        assert wait_ping(lab.ep_a, "10.77.0.20", timeout=15) is not None, "ovs a -> kernel c"
        with (
            capturing("eth0", lab.ep_a) as at_a,
            capturing("eth0", lab.ep_b) as at_b,
            capturing("eth0", lab.ep_c) as at_c,
        ):
            _broadcast_from(lab.ep_a, "10.77.0.10")
            time.sleep(0.3)
        dump = lab.ovs.ofctl("-O", "OpenFlow14", "dump-flows", "br-heddle", "table=20")
        flood = [ln for ln in dump.splitlines() if "priority=50" in ln]
    assert len(flood) == 1 and "in_port" not in flood[0], flood
    assert ipv4_from(at_b.frames, "10.77.0.10") == 3, "the other local member"
    assert ipv4_from(at_c.frames, "10.77.0.10") == 3, "the member host, through the tunnel"
    assert ipv4_from(at_a.frames, "10.77.0.10") == 0, "never back to the sender"


def test_spoofed_source_mac_or_ip_is_dropped(lab: Lab) -> None:
    view = host_view(snapshot(lab), H1)
    with dataplane(lab) as dp:
        converge(dp, view)
        assert wait_ping(lab.ep_a, "10.77.0.11", timeout=10) is not None
        # a source address that is not a's own: dropped even with a forged ARP entry
        ip(lab.ep_a, "addr", "add", "10.77.0.99/32", "dev", "eth0")
        forge_neighbour(lab.ep_a, "10.77.0.11", MAC_B)
        spoof_ip = busybox(lab.ep_a, "ping", "-c", "2", "-W", "1", "-I", "10.77.0.99", "10.77.0.11")
        assert spoof_ip.returncode != 0, spoof_ip.stdout
        ip(lab.ep_a, "addr", "del", "10.77.0.99/32", "dev", "eth0")
        assert ping(lab.ep_a, "10.77.0.11", count=2).ok
        # a's own address from another MAC: dropped too (ARP included: no answer at all)
        ip(lab.ep_a, "link", "set", "eth0", "address", "02:42:0a:4d:00:63")
        ip(lab.ep_a, "neigh", "flush", "dev", "eth0")
        assert not ping(lab.ep_a, "10.77.0.11", count=3, wait=1.0).ok
        arp = busybox(lab.ep_a, "arping", "-c", "1", "-w", "2", "-I", "eth0", "10.77.0.11")
        assert "02:42:0a:4d:00:0b" not in arp.stdout.lower()
        # drift repair puts the MAC back; traffic flows again
        converge(dp, view)
        assert wait_ping(lab.ep_a, "10.77.0.11", timeout=10) is not None


ASK_H3 = ResolveVteps("br-phy", H1.vtep, (H3.vtep,))


def settled(ops: tuple[object, ...]) -> tuple[object, ...]:
    """``ops`` without asking h3's VTEP again: h3 does not exist, so a driver that has not
    asked it yet (a new one) asks it once."""
    return tuple(op for op in ops if op != ASK_H3)


def test_new_dataplane_adopts_everything_and_plans_nothing(lab: Lab) -> None:
    view = host_view(snapshot(lab), H1)
    with dataplane(lab) as dp:
        before = converge(dp, view)
        assert before.underlay is not None and before.underlay.unanswered == {H3.vtep}
        assert H2.vtep in before.underlay.tunnel_neighbours
    with dataplane(lab) as again:  # an agent restart: new process, same OVS
        state = again.observe(view)
        # only the member VTEP that never answered is asked again
        assert again.plan(view, state) == (ASK_H3,)
        assert before.underlay is not None
        assert state == replace(before, underlay=replace(before.underlay, unanswered=frozenset()))


def _normalise_ovs(state: OvsState) -> OvsState:
    """Drop what OVS and the kernel assign (OpenFlow numbers granted, interface errors,
    ifindexes, generated MACs, numbers foreign interfaces hold): what is left is what heddle
    asked for, which the fake must hold alike."""
    bridges = {}
    underlay = state.underlay
    if underlay is not None:  # OVS also snoops our own gratuitous ARP for our VTEP
        underlay = replace(underlay, tunnel_neighbours=underlay.tunnel_neighbours - {H1.vtep})
    for name, br in state.ovsdb.bridges.items():
        ports = {p: replace(ps, ofport=None, error=None) for p, ps in br.ports.items()}
        bridges[name] = replace(br, ports=ports, used_ofports=frozenset())
    links = {
        name: replace(lk, index=0, mac=lk.mac if name.startswith("hdp") else "")
        for name, lk in state.kernel.links.items()
    }
    return replace(
        state,
        ovsdb=replace(state.ovsdb, bridges=bridges),
        kernel=replace(state.kernel, links=links),
        underlay=underlay,
    )


def test_contract_fake_ovs_and_real_ovs_end_in_equal_states(lab: Lab) -> None:
    """``FakeOvs`` holds what a real OVS (and the kernel under it) holds after the same passes:
    a network built, an endpoint removed, everything removed."""
    steps = [
        host_view(snapshot(lab), H1),
        host_view(snapshot(lab, drop=("b", "f"), rev=2), H1),
        host_view(replace(snapshot(lab, rev=3), endpoints={}), H1),
    ]
    layout = OvsLayout(datapath="netdev", underlay_dev="ul0")
    fake = FakeOvs(layout, H1.vtep, netns=(lab.ep_a, lab.ep_b), nic_address=f"{H1.vtep}/24")
    fake.silent_vteps.add(H3.vtep)
    with dataplane(lab) as dp:
        for view in steps:
            real_state = _normalise_ovs(converge(dp, view))
            fake.apply(fake.plan(view, fake.observe(view)))
            fake_state = _normalise_ovs(fake.observe(view))
            assert fake.plan(view, fake.observe(view)) == ()
            for part in ("ovsdb", "flows", "underlay", "tx_checksum"):
                assert getattr(fake_state, part) == getattr(real_state, part), part
            fake_links, real_links = fake_state.kernel.links, real_state.kernel.links
            differ = {n: (fake_links.get(n), real_links.get(n))
                      for n in fake_links.keys() | real_links.keys()
                      if fake_links.get(n) != real_links.get(n)}  # fmt: skip
            assert not differ, differ
            assert fake_state.kernel == real_state.kernel
            # what the metrics and `heddle trace` read agree too
            assert fake.inventory(view, fake_state) == dp.inventory(view, real_state)
            for nv in view.networks:
                name = nv.network.name
                assert fake.facts(view, name, fake_state) == dp.facts(view, name, real_state)


def test_incremental_change_is_a_delta_and_removal_cleans_up(lab: Lab) -> None:
    with dataplane(lab) as dp:
        full = host_view(snapshot(lab), H1)
        converge(dp, full)
        lab.ovs.ofctl("add-flow", "br-heddle", "cookie=0x77,table=40,priority=1,actions=drop")
        smaller = host_view(snapshot(lab, drop=("b", "f"), rev=2), H1)
        ops = dp.plan(smaller, dp.observe(smaller))
        assert not any(isinstance(op, ReplaceFlows) for op in ops)
        assert any(isinstance(op, ModFlows) for op in ops)
        dp.apply(ops)
        state = dp.observe(smaller)
        assert dp.plan(smaller, state) == ()
        assert veth_host_name("blue", "b") not in state.ovsdb.bridges["br-heddle"].ports
        assert veth_host_name("blue", "b") not in state.kernel.links
        assert "cookie=0x77" in lab.ovs.ofctl("dump-flows", "br-heddle"), "foreign flow kept"
        # back to the full view: b gets its old number back only if free; a keeps 10
        converge(dp, full)
        ports = dp.observe(full).ovsdb.bridges["br-heddle"].ports
        assert ports[veth_host_name("blue", "a")].ofport == 10


def test_drift_is_repaired(lab: Lab) -> None:
    view = host_view(snapshot(lab), H1)
    with dataplane(lab) as dp:
        converge(dp, view)
        port_b = veth_host_name("blue", "b")
        lab.ovs.vsctl("del-port", "br-heddle", port_b)
        lab.ovs.ofctl(
            "--strict",
            "del-flows",
            "br-heddle",
            "table=20,priority=100,reg6=0x4242,dl_dst=" + MAC_B,
        )
        ip(lab.host, "link", "del", veth_host_name("blue", "a"))
        ops = dp.plan(view, dp.observe(view))
        assert ops and not any(isinstance(op, ReplaceFlows) for op in ops)
        dp.apply(ops)
        assert dp.plan(view, dp.observe(view)) == ()
        assert wait_ping(lab.ep_a, "10.77.0.11", timeout=10) is not None


def test_port_with_ofport_minus_one_fails_clearly(lab: Lab) -> None:
    view = host_view(snapshot(lab), H1)
    with dataplane(lab) as dp:
        converge(dp, view)
        bad = EnsureOvsPort("br-heddle", "hdvnothere", 500, network="blue", endpoint="zz")
        with pytest.raises(DataPlaneError, match="ofport -1"):
            dp.apply([bad])
        view2 = host_view(snapshot(lab, rev=2), H1)
        dp.apply(dp.plan(view2, dp.observe(view2)))  # the stray owned port is collected
        assert "hdvnothere" not in dp.observe(view2).ovsdb.bridges["br-heddle"].ports


def test_an_endpoint_port_written_without_waiting_fails_at_its_await(lab: Lab) -> None:
    """The endpoint port's write returns before ovs-vswitchd acts; the await that follows
    fails as the waiting write would have, with ovs-vswitchd's reason, and names the port."""
    view = host_view(snapshot(lab), H1)
    with dataplane(lab) as dp:
        converge(dp, view)
        bad = EnsureOvsPort(
            "br-heddle", "hdvnothere", 500, network="blue", endpoint="zz", wait=False
        )
        dp.apply([bad])  # committed; ovs-vswitchd has not been asked anything yet
        with pytest.raises(DataPlaneError, match="hdvnothere has ofport -1") as err:
            dp.apply([AwaitOvsPort("br-heddle", "hdvnothere", 500)])
        assert [type(op) for op, _ in err.value.failures] == [AwaitOvsPort]
        view2 = host_view(snapshot(lab, rev=2), H1)
        dp.apply(dp.plan(view2, dp.observe(view2)))  # the stray owned port is collected
        assert "hdvnothere" not in dp.observe(view2).ovsdb.bridges["br-heddle"].ports
        assert dp.plan(view2, dp.observe(view2)) == ()


def test_vswitchd_restart_is_detected_and_flows_are_restored(lab: Lab) -> None:
    snap = snapshot(lab)
    view = host_view(snap, H1)
    woke = threading.Event()
    with dataplane(lab, on_change=woke.set) as dp, peer_host(lab, snap):
        converge(dp, view)
        assert woke.wait(5), "the watch connects once the bridge exists"
        assert wait_ping(lab.ep_a, "10.77.0.20", timeout=15) is not None
        woke.clear()
        lab.ovs.kill_vswitchd(signal.SIGKILL)
        assert woke.wait(5), "a dead ovs-vswitchd is noticed"
        woke.clear()
        t0 = time.monotonic()
        lab.ovs.start_vswitchd()
        assert woke.wait(10), "a new ovs-vswitchd is noticed"
        state = dp.observe(view)
        assert not state.flows.get("br-heddle"), "a restarted ovs-vswitchd has empty tables"
        ops = dp.plan(view, state)
        assert any(isinstance(op, BeginFlowRestore) for op in ops)
        # the cache went with ovs-vswitchd: h2's VTEP is asked again once it forwards
        assert isinstance(ops[-2], EndFlowRestore)
        assert ops[-1] == ResolveVteps("br-phy", H1.vtep, (H2.vtep,))
        assert {op.bridge for op in ops if isinstance(op, ReplaceFlows)} == {"br-phy", "br-heddle"}
        dp.apply(ops)
        restored = time.monotonic() - t0
        after = dp.observe(view)
        assert dp.plan(view, after) == ()
        assert (
            after.ovsdb.flow_restore_wait and not after.ovsdb.bridges["br-heddle"].restore_pending
        )
        assert wait_ping(lab.ep_a, "10.77.0.20", timeout=15) is not None
        assert wait_ping(lab.ep_a, "10.77.0.11", timeout=5) is not None
        print(f"vswitchd start -> flows restored: {restored:.2f}s")


def test_interrupted_restore_is_finished_by_the_next_pass(lab: Lab) -> None:
    view = host_view(snapshot(lab), H1)
    with dataplane(lab) as dp:
        converge(dp, view)
        lab.ovs.kill_vswitchd(signal.SIGKILL)
        lab.ovs.start_vswitchd()
        ops = dp.plan(view, dp.observe(view))
        dp.apply([op for op in ops if not isinstance(op, EndFlowRestore)])  # agent "dies"
        state = dp.observe(view)
        assert state.ovsdb.bridges["br-heddle"].restore_pending
        assert dp.plan(view, state) == (EndFlowRestore("br-heddle", ("br-phy", "br-heddle")),)
        converge(dp, view)
        assert wait_ping(lab.ep_a, "10.77.0.11", timeout=10) is not None


def test_never_touches_foreign_bridges_or_ports(lab: Lab) -> None:
    view = host_view(snapshot(lab), H1)
    lab.ovs.vsctl("add-br", "br-other", "--", "set", "bridge", "br-other", "datapath_type=netdev")
    with dataplane(lab) as dp:
        converge(dp, view)
        lab.ovs.vsctl("add-port", "br-heddle", "foreign0", "--", "set", "interface", "foreign0",
                      "type=internal")  # fmt: skip
        state = dp.observe(view)
        assert not state.ovsdb.bridges["br-heddle"].ports["foreign0"].owned
        assert dp.plan(view, state) == ()
        assert "br-other" not in state.ovsdb.bridges
    assert "br-other" in lab.ovs.vsctl("list-br")
    assert "foreign0" in lab.ovs.vsctl("list-ports", "br-heddle")


def test_mtu_change_reaches_veths_and_endpoints(lab: Lab) -> None:
    snap = snapshot(lab)
    with dataplane(lab) as dp:
        converge(dp, host_view(snap, H1))
        net = replace(snap.networks["blue"], mtu=1400)
        view = host_view(replace(snap, networks={"blue": net}, revision=2), H1)
        state = converge(dp, view)
        assert state.kernel.links[veth_host_name("blue", "a")].mtu == 1400
        assert state.kernel.endpoints[lab.ep_a, "eth0"].mtu == 1400


def test_agent_loop_restores_traffic_right_after_vswitchd_restart(lab: Lab) -> None:
    """The reconciler driven by the watch, as in the agent: measure the traffic gap."""
    snap = snapshot(lab)
    trigger = Trigger()
    with dataplane(lab, on_change=trigger.fire) as dp:
        rec = Reconciler(H1, lambda: snap, dp, trigger, resync_interval=60.0)
        worker = threading.Thread(target=rec.run, daemon=True)
        worker.start()
        try:
            deadline = time.monotonic() + 15
            while not (rec.last is not None and rec.last.ok) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert wait_ping(lab.ep_a, "10.77.0.11", timeout=10) is not None
            interval = 0.02
            box: list[PingResult] = []
            pinger = threading.Thread(
                target=lambda: box.append(
                    ping(lab.ep_a, "10.77.0.11", count=None, duration=5.0, interval=interval)
                ),
                daemon=True,
            )
            pinger.start()
            time.sleep(1.0)
            t_kill = time.monotonic()
            lab.ovs.kill_vswitchd(signal.SIGKILL)
            time.sleep(1.0)
            t_start = time.monotonic()
            lab.ovs.start_vswitchd()
            pinger.join(15)
            [res] = box
            down = t_start - t_kill
            gap = len(res.lost) * interval
            print(
                f"ping every {interval * 1000:.0f} ms: {len(res.lost)} lost = {gap:.2f}s, "
                f"{down:.2f}s without ovs-vswitchd: back {gap - down:.2f}s after its start"
            )
            assert res.received > 0 and res.lost and res.lost[-1] < res.sent - 10, "back at the end"
            assert gap - down < 3.0
        finally:
            rec.stop()
            worker.join(10)


def test_two_ovs_hosts_connect_over_userspace_tunnels(lab: Lab) -> None:
    """h2 on the ovs backend too (its own OVS instance in the peer namespace)."""
    h2 = replace(H2, backend="ovs")
    snap = replace(snapshot(lab), hosts={h.name: h for h in (H1, h2, H3)})
    peer_ovs = lab_ovs.start(lab.peer, Path(f"/tmp/{lab.prefix}-u"))
    try:
        with (
            dataplane(lab) as dp1,
            OvsDataPlane(
                h2.vtep, ovsdb=peer_ovs.db_url, datapath="netdev", underlay_dev="ulp",
                netns=lab.peer,
            ) as dp2,
        ):  # fmt: skip
            converge(dp1, host_view(snap, H1))
            converge(dp2, host_view(snap, h2))
            # OVS's tunnel-neighbour caches lose their entries (aged out, or never learned: a
            # host whose OVS started after the other's gratuitous ARP). The next full pass on
            # each side resolves the other's VTEP again, so the very first packet crosses
            # (OVS alone would drop it while it sends its own ARP).
            for inst in (lab.ovs, peer_ovs):
                inst.appctl("tnl/neigh/flush")
            for dp, me in ((dp1, H1), (dp2, h2)):
                view = host_view(snap, me)
                ops = dp.plan(view, dp.observe(view))
                assert [op for op in ops if isinstance(op, ResolveVteps)], ops
                dp.apply(ops)
            first = busybox(lab.ep_a, "ping", "-c1", "-W2", "10.77.0.20")
            assert first.returncode == 0, first.stdout + first.stderr
            assert wait_ping(lab.ep_a, "10.77.0.20", timeout=15) is not None
            assert wait_ping(lab.ep_c, "10.77.0.11", timeout=15) is not None
            assert tcp_echo(lab, lab.ep_c, lab.ep_b, "10.77.0.20") != b"mismatch"
    finally:
        peer_ovs.stop(remove_workdir=True)


def test_incremental_passes_keep_the_invariant_on_a_real_ovs(lab: Lab) -> None:
    """Incremental over the real ovs driver, 40 random rounds of remote changes (added, moved,
    removed) with a local endpoint now and then: after every pass a fresh driver's full
    observation plans nothing, most passes are flow modifications that read nothing, and no
    announcement of the agent's own changes is taken for drift. Then a port deleted by hand is
    seen through the OVSDB IDL and repaired by the next pass."""
    rng = random.Random(1511)
    inner = dataplane(lab)
    dp = Incremental(
        inner, OvsShortcut(inner.layout), ttl=3600.0, still=inner.unchanged,
        listen=listener(lab.host),
    )  # fmt: skip
    fresh = dataplane(lab)
    base = snapshot(lab)
    eps = dict(base.endpoints)

    def run(snap: Snapshot) -> HostView:
        view = host_view(snap, H1)
        ops = dp.plan(view, dp.observe(view))
        if ops:
            dp.apply(ops)
        return view

    try:
        for _ in range(40):
            for _ in range(rng.randint(1, 3)):
                last = rng.randint(40, 55)
                roll = rng.random()
                if roll < 0.3:
                    eps.pop(("blue", f"r{last}"), None)
                elif roll > 0.95:
                    eps[("blue", "b")] = replace(eps[("blue", "b")], ip=f"10.77.0.{last}")
                else:
                    host = rng.choice(("h2", "h3"))
                    eps[("blue", f"r{last}")] = Endpoint(
                        f"r{last}", "blue", host, f"10.77.0.{last}", f"02:42:0a:4d:00:{last:02x}"
                    )
            view = run(replace(base, endpoints=dict(eps)))
            assert settled(fresh.plan(view, fresh.observe(view))) == (), "not converged"
        assert dp.incremental_passes >= 20, (dp.incremental_passes, dp.full_passes)
        assert dp.drifts == 0
        snap = replace(base, endpoints=dict(eps))
        view = run(snap)
        lab.ovs.vsctl("del-port", "br-heddle", veth_host_name("blue", "a"))
        eps[("blue", "r60")] = Endpoint("r60", "blue", "h2", "10.77.0.60", "02:42:0a:4d:00:3c")
        view = run(replace(base, endpoints=dict(eps)))
        assert dp.observed_in_full  # the IDL said OVSDB changed: read afresh, repaired
        assert settled(fresh.plan(view, fresh.observe(view))) == ()
    finally:
        dp.close()
        fresh.close()

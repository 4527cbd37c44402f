"""The plugin server on a real unix socket, driven like dockerd drives it, on a real etcd.

Two "hosts" (two servers, one etcd) speak raw HTTP/1.1 the way dockerd's Go client does: POST,
no Content-Type, empty bodies for argument-less calls, an empty or ``plugin.moby.localhost`` Host,
several concurrent keep-alive connections. The socket lives in a tmp dir; servers are stopped and
sockets removed even when a test fails. Readiness is a fake here (no agent runs); the real
``KernelProbe`` is checked against ``KernelDataPlane`` in a throw-away netns (root only).
"""

from __future__ import annotations

import os
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from controller.dataplane.kernel import KernelDataPlane
from controller.desired import DesiredState
from controller.model import codec
from controller.model.naming import OWNER_ALIAS, veth_host_name, veth_peer_name
from controller.model.records import Endpoint, Host, Network
from controller.model.view import Snapshot, host_view
from controller.plugin import keys as pkeys
from controller.plugin.client import DockerLike, PluginCallError, UnixTransport, new_id
from controller.plugin.readiness import KernelProbe, LinkReadiness
from controller.plugin.server import PluginServer, PluginServerError
from controller.plugin.service import plugin_server
from controller.store import keys
from controller.store.etcd import EtcdKV
from controller.store.kv import Put, Txn

pytestmark = [pytest.mark.etcd]

HOSTS = ("h1", "h2")


def _ready(network: str, endpoint_id: str, timeout: float) -> bool:
    return True


class Cluster:
    """Two plugin servers (one per host) on one etcd; everything stopped in ``close``."""

    def __init__(self, kv: EtcdKV, tmp: Path) -> None:
        self.kv = kv
        self.tmp = tmp
        self.servers: dict[str, PluginServer] = {}
        self.transports: list[UnixTransport] = []
        for h in HOSTS:
            host = Host(h, f"172.31.253.{h[1]}")
            kv.commit(Txn(success=(Put(keys.host(h), codec.encode_host(host).encode()),)))
            self.start(h)

    def path(self, host: str) -> str:
        return str(self.tmp / host / "plugins" / "heddle.sock")

    def start(self, host: str) -> PluginServer:
        server = plugin_server(self.kv, host, self.path(host), _ready, join_timeout=1.0)
        server.start()
        self.servers[host] = server
        return server

    def transport(self, host: str, **kw: str) -> UnixTransport:
        t = UnixTransport(self.path(host), timeout=10.0, **kw)
        self.transports.append(t)
        return t

    def docker(self, host: str) -> DockerLike:
        return DockerLike(self.transport(host))

    def dump(self, prefix: str = keys.ROOT) -> dict[str, bytes]:
        return {i.key: i.value for i in self.kv.list(prefix).items}

    def close(self) -> None:
        for t in self.transports:
            t.close()
        for s in self.servers.values():
            s.stop()


@pytest.fixture
def cluster(etcd_kv: EtcdKV, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(etcd_kv, tmp_path)
    try:
        yield c
    finally:
        c.close()


def test_dockerd_sequences_over_the_socket_leave_nothing(cluster: Cluster) -> None:
    d1, d2 = cluster.docker("h1"), cluster.docker("h2")
    d1.activate()
    d2.activate()
    n1 = d1.network_create("blue", "10.20.0.0/24")
    n2 = d2.network_create("blue")
    c1, c2 = d1.run(n1), d2.run(n2)
    assert {c1.ip, c2.ip} == {"10.20.0.2", "10.20.0.3"}
    assert c1.gateway == c2.gateway == "10.20.0.1"
    eps = {e.host: e for e in DesiredState(cluster.kv).endpoints("blue")}
    assert eps["h1"].ip == c1.ip and eps["h1"].netns is None
    d1.stop(n1, c1)
    d2.stop(n2, c2)
    d1.network_rm(n1)
    d2.network_rm(n2)
    assert cluster.dump(pkeys.DOCKER) == {}
    assert cluster.dump(keys.ENDPOINTS) == {} and cluster.dump(keys.IPAM) == {}
    DesiredState(cluster.kv).remove_network("blue")
    assert set(cluster.dump()) == {keys.host(h) for h in HOSTS}
    for t in cluster.transports:
        assert t.connects == 1  # one keep-alive connection carried every call


def test_concurrent_keepalive_connections_on_two_hosts(cluster: Cluster) -> None:
    nets = {
        "h1": cluster.docker("h1").network_create("blue", "10.20.0.0/24"),
        "h2": cluster.docker("h2").network_create("blue"),
    }
    dockers = [(h, cluster.docker(h)) for h in HOSTS for _ in range(4)]  # 8 connections

    def run_two(job: tuple[str, DockerLike]) -> list[str]:
        host, d = job
        return [d.run(nets[host]).ip for _ in range(3)]

    with ThreadPoolExecutor(8) as pool:
        ips = [ip for batch in pool.map(run_two, dockers) for ip in batch]
    assert len(ips) == len(set(ips)) == 24
    assert len(DesiredState(cluster.kv).endpoints("blue")) == 24
    assert all(t.connects == 1 for t in cluster.transports)


@pytest.mark.parametrize("host_header", ["", "plugin.moby.localhost"])
def test_raw_requests_like_dockerd(cluster: Cluster, host_header: str) -> None:
    t = cluster.transport("h1", host_header=host_header)
    status, body = t("/Plugin.Activate", b"")
    assert (status, body) == (200, {"Implements": ["NetworkDriver", "IpamDriver"]})
    assert t("/IpamDriver.GetDefaultAddressSpaces", b"")[0] == 200
    assert t("/NetworkDriver.CreateNetwork", b'{"NetworkID": ')[0] == 400
    status, body = t("/IpamDriver.ReleasePool", b"{}\n")
    assert status == 400 and "missing field PoolID" in body["Error"]
    status, body = t("/NetworkDriver.AllocateNetwork", b"{}")
    assert status == 404 and "AllocateNetwork" in body["Err"]
    assert t.connects == 1  # errors do not close the connection


def test_http_edge_cases(cluster: Cluster) -> None:
    t = cluster.transport("h1")
    parts = [b'{"Options":{"heddle.netwo', b'rk":"blue"}}\n']
    chunked = (
        b"POST /IpamDriver.RequestPool HTTP/1.1\r\nHost: \r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
        + b"0\r\n\r\n"
    )
    status, data = t.raw(chunked)
    assert status == 500 and b"does not exist: pass --subnet" in data  # parsed the whole body
    head = b"POST /Plugin.Activate HTTP/1.1\r\nHost: \r\nContent-Length: %d\r\n\r\n"
    status, data = t.raw(head % (2 << 20))
    assert status == 413
    status, data = t.raw(b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    assert status == 400
    status, data = t.raw(b"GET /Plugin.Activate HTTP/1.1\r\nHost: \r\n\r\n")
    assert status == 405 and b"POST" in data
    assert t("/Plugin.Activate", b"")[0] == 200  # reconnects after the server closed


def test_broken_bodies_change_nothing(cluster: Cluster) -> None:
    d1 = cluster.docker("h1")
    net = d1.network_create("blue", "10.20.0.0/24")
    d1.run(net)
    before = cluster.dump()
    t = cluster.transport("h1")
    for path, body in [
        ("/NetworkDriver.CreateEndpoint", b'{"NetworkID": "%s", "Interface": {}}'),
        ("/NetworkDriver.CreateEndpoint", b"\x00\x01garbage"),
        ("/IpamDriver.RequestAddress", b'{"PoolID": 12}'),
        ("/IpamDriver.ReleaseAddress", b'{"PoolID": "heddle/blue/10.20.0.0/24"}'),
        ("/NetworkDriver.DeleteEndpoint", b'{"NetworkID": "x/../../y", "EndpointID": "z"}'),
    ]:
        status, answer = t(path, body.replace(b"%s", net.network_id.encode()))
        assert status == 400, (path, answer)
        assert answer.get("Err")
    assert cluster.dump() == before


def test_socket_file_lifecycle(cluster: Cluster, tmp_path: Path) -> None:
    path = Path(cluster.path("h1"))
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    with pytest.raises(PluginServerError, match="served by another running process"):
        plugin_server(cluster.kv, "h1", path, _ready).start()
    idle = cluster.transport("h1")
    assert idle("/Plugin.Activate", b"")[0] == 200
    cluster.servers["h1"].stop()
    assert not path.exists()
    cluster.servers["h1"].stop()  # idempotent
    with pytest.raises(OSError):  # the idle keep-alive connection was closed, not left hanging
        idle.raw(b"POST /Plugin.Activate HTTP/1.1\r\nHost: \r\nContent-Length: 0\r\n\r\n")
    # a stale socket (its server died without cleaning up) is replaced
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    cluster.start("h1")
    assert cluster.transport("h1")("/Plugin.Activate", b"")[0] == 200
    # a path that is not a socket is never touched
    other = tmp_path / "not-a-socket"
    other.write_text("keep me")
    with pytest.raises(PluginServerError, match="not a socket"):
        plugin_server(cluster.kv, "h1", other, _ready).start()
    assert other.read_text() == "keep me"


def test_a_restarted_plugin_continues_from_etcd(cluster: Cluster) -> None:
    d1 = cluster.docker("h1")
    net = d1.network_create("blue", "10.20.0.0/24")
    c = d1.run(net)
    cluster.servers["h1"].stop()
    cluster.start("h1")  # no Activate, no replay: dockerd just calls on
    d1 = cluster.docker("h1")
    c2 = d1.run(net)
    assert c2.ip != c.ip
    d1.stop(net, c)
    d1.stop(net, c2)
    d1.network_rm(net)
    assert cluster.dump(pkeys.DOCKER) == {} and cluster.dump(keys.IPAM) == {}


def test_stop_lets_an_inflight_join_finish(etcd_kv: EtcdKV, tmp_path: Path) -> None:
    kv = etcd_kv
    kv.commit(
        Txn(success=(Put(keys.host("h1"), codec.encode_host(Host("h1", "10.0.0.1")).encode()),))
    )

    def slow(network: str, endpoint_id: str, timeout: float) -> bool:
        time.sleep(0.5)
        return True

    path = tmp_path / "p" / "heddle.sock"
    server = plugin_server(kv, "h1", path, slow)
    server.start()
    t = UnixTransport(str(path))
    try:
        d = DockerLike(t)
        net = d.network_create("blue", "10.20.0.0/24")
        address = d.call("/IpamDriver.RequestAddress", {"PoolID": net.pool_id})["Address"]
        ids = {"NetworkID": net.network_id, "EndpointID": new_id()}
        d.call("/NetworkDriver.CreateEndpoint", {**ids, "Interface": {"Address": address}})
        with ThreadPoolExecutor(1) as pool:
            join = pool.submit(d.call, "/NetworkDriver.Join", ids)
            time.sleep(0.2)
            server.stop(grace=5.0)
            assert join.result(timeout=10)["InterfaceName"]["DstPrefix"] == "eth"
    finally:
        t.close()
        server.stop()


def test_join_errors_are_clear_over_the_wire(etcd_kv: EtcdKV, tmp_path: Path) -> None:
    kv = etcd_kv
    kv.commit(
        Txn(success=(Put(keys.host("h1"), codec.encode_host(Host("h1", "10.0.0.1")).encode()),))
    )
    path = tmp_path / "heddle.sock"
    never = LinkReadiness(lambda network, eid: False, poll_interval=0.05)
    server = plugin_server(kv, "h1", path, never, join_timeout=0.3)
    server.start()
    t = UnixTransport(str(path))
    try:
        d = DockerLike(t)
        net = d.network_create("blue", "10.20.0.0/24")
        with pytest.raises(PluginCallError) as err:
            d.run(net)
        assert err.value.status == 500
        assert "did not create the interface" in err.value.body["Err"]
        assert DesiredState(kv).endpoints("blue") == []
    finally:
        t.close()
        server.stop()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a network namespace")
def test_kernel_probe_sees_the_pair_the_data_plane_builds() -> None:
    ns = f"hdp-{uuid.uuid4().hex[:6]}"
    netns.create(ns)
    try:
        host = Host("h1", "192.0.2.1")
        net = Network("blue", 0x4243, "10.78.0.0/24", gateway="10.78.0.1")
        ep = Endpoint("d0c0", "blue", "h1", "10.78.0.5", "02:42:0a:4e:00:05")  # Docker-style
        snap = Snapshot(1, {"blue": net}, {("blue", "d0c0"): ep}, {"h1": host})
        probe = KernelProbe(netns=ns)
        waiter = LinkReadiness(probe, poll_interval=0.01)
        try:
            assert probe("blue", "d0c0") is False
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(waiter, "blue", "d0c0", 10.0)
                with KernelDataPlane(host.vtep, netns=ns) as dp:
                    view = host_view(snap, host)
                    dp.apply(dp.plan(view, dp.observe(view)))
                assert waiting.result(timeout=10) is True
            assert probe("blue", "other") is False
            # the ovs backend's pair has no Linux bridge master: only require_master=False
            # accepts it
            loose = KernelProbe(netns=ns, require_master=False)
            with IPRoute(netns=ns, flags=0) as ipr:
                hv, pv = veth_host_name("blue", "ovs1"), veth_peer_name("blue", "ovs1")
                ipr.link("add", ifname=hv, kind="veth", peer={"ifname": pv})
                for name in (hv, pv):
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], ifalias=OWNER_ALIAS)
                ipr.link("set", index=ipr.link_lookup(ifname=hv)[0], state="up")
            assert probe("blue", "ovs1") is False
            assert loose("blue", "ovs1") is True
            loose.close()
            with IPRoute(netns=ns, flags=0) as ipr:  # the peer moved away (into a container)
                peer = ipr.link_lookup(ifname=veth_peer_name("blue", "d0c0"))[0]
                ipr.link("set", index=peer, state="down")
                ipr.link("set", index=peer, ifname="eth9")
            assert probe("blue", "d0c0") is False
        finally:
            probe.close()
    finally:
        netns.remove(ns)

"""End-to-end with a real Docker engine: one dockerd per lab host, the agents serving the plugin.

The module runs once per engine (``docker_engine.ENGINES``: Debian 12's 20.10 and trixie's 26.1,
fetched into a cache outside the repository on first use) on the kernel backend, and once more
with the first engine on the ovs backend (the plugin is the same; what the agent builds for a
Docker endpoint differs), with the same tests on all three.
One lab (2 hosts, prefix ``hld``) with agents started with ``--plugin-socket`` pointing into each
host's private ``/run/docker/plugins`` (``controller.lab.docker``), and one dockerd per host
(``--live-restore``, so a dockerd restart keeps containers running). Every test creates its own
Docker and heddle networks and containers and removes them afterwards (``dock`` fixture).
Needs root, ``docker.io`` and ``busybox-static``; everything is stopped by PID and removed even
when a test fails (dockerd/agent logs are copied to ``<tmp>/docker-lab-logs`` first).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.desired import DesiredState
from controller.lab.docker import IMAGE, DockerLab
from controller.lab.docker_engine import ENGINES
from controller.lab.nsutil import LabError
from controller.lab.probes import ovs_endpoint_ports, owned_links
from controller.lab.topology import Lab
from controller.model.errors import NotFound
from controller.model.naming import veth_host_name, veth_peer_name
from controller.plugin import keys as pkeys
from controller.plugin.client import UnixTransport
from controller.store import keys
from controller.store.etcd import EtcdKV

LAB_PREFIX = "hld"
MGMT, UNDERLAY = "172.31.242.0/24", "172.31.241.0/24"
HOSTS = ("h1", "h2")
SLEEP = ("sleep", "3600")
PLUGIN_WAIT = 15.0


@dataclass
class Env:
    lab: Lab
    docker: DockerLab
    kv: EtcdKV
    engine: str
    backend: str

    @property
    def desired(self) -> DesiredState:
        return DesiredState(self.kv)


RUNS = [*((e, "kernel") for e in ENGINES), (ENGINES[0], "ovs")]


@pytest.fixture(
    scope="module",
    params=RUNS,
    ids=lambda r: f"docker-{r[0]}" if r[1] == "kernel" else f"docker-{r[0]}-{r[1]}",
)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    for path, pkg in (("/usr/sbin/dockerd", "docker.io"), ("/bin/busybox", "busybox-static")):
        if not Path(path).exists():
            pytest.skip(f"{path} missing (apt install {pkg})")
    engine, backend = request.param
    if backend == "ovs" and shutil.which("ovs-vswitchd") is None:
        pytest.skip("the ovs backend needs Open vSwitch (apt-get install openvswitch-switch)")
    workdir = tmp_path_factory.mktemp(f"docker-lab-{engine}-{backend}") / "lab"
    lab = Lab(workdir, prefix=LAB_PREFIX, mgmt_subnet=MGMT, underlay_subnet=UNDERLAY)
    dl = DockerLab(lab, live_restore=True, engine=engine)
    lab.agents.plugin_socket = dl.plugin_socket
    kv: EtcdKV | None = None
    try:
        lab.up(hosts=len(HOSTS), backend=backend, resync_interval=2.0)
        if not dl.wait_plugins(PLUGIN_WAIT):
            pytest.fail(
                f"the agents do not serve the Docker plugin at {dl.plugin_socket('h1')} "
                "(is controller.plugin wired into run_agent?)"
            )
        dl.start()
        kv = EtcdKV([lab.etcd_url])
        yield Env(lab, dl, kv, engine, backend)
    finally:
        logs = tmp_path_factory.mktemp(f"docker-lab-logs-{engine}-{backend}")
        for log in [*workdir.glob("*.log"), *dl.base.glob("*/*.log")]:
            with contextlib.suppress(OSError):
                shutil.copy(log, logs / f"{log.parent.name}-{log.name}")
        if kv is not None:
            kv.close()
        try:
            dl.down()
        finally:
            lab.down()


@dataclass
class Dock:
    """Docker objects of one test, removed by ``cleanup`` (containers, networks, heddle nets)."""

    env: Env
    containers: list[tuple[str, str]] = field(default_factory=list)
    networks: list[tuple[str, str]] = field(default_factory=list)
    heddle: list[str] = field(default_factory=list)

    def docker(self, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.env.docker.docker(host, *args, check=check)

    def network(self, name: str, subnet: str | None, hosts: tuple[str, ...] = HOSTS) -> None:
        """``docker network create`` of heddle network ``name`` on ``hosts``: the first with
        ``subnet`` (it creates the heddle network), the others without (they join it)."""
        if name not in self.heddle:
            self.heddle.append(name)
        for i, h in enumerate(hosts):
            sub = ["--subnet", subnet] if subnet and i == 0 else []
            self.networks.append((h, name))
            self.docker(h, "network", "create", "-d", "heddle", "--ipam-driver", "heddle",
                        "-o", f"heddle.network={name}", "--ipam-opt", f"heddle.network={name}",
                        *sub, name)  # fmt: skip

    def run(
        self, host: str, name: str, network: str, *extra: str, cmd: tuple[str, ...] = SLEEP
    ) -> str:
        """Start ``cmd`` in container ``name`` on ``network``; return its address."""
        self.containers.append((host, name))
        self.docker(host, "run", "-d", "--name", name, "--network", network, *extra, IMAGE, *cmd)
        return self.ip(host, name, network)

    def pinger(self, host: str, name: str, network: str, ip: str, count: int) -> None:
        """A container whose main process pings ``ip`` ``count`` times, 5 per second. Its
        result is read with ``pinged`` (no exec session that a restart could cut)."""
        self.run(host, name, network, cmd=("ping", "-c", str(count), "-i", "0.2", "-W", "2", ip))

    def pinged(self, host: str, name: str) -> tuple[int, str]:
        """Wait for pinger ``name`` to finish; (replies received, its output)."""
        self.docker(host, "wait", name)
        out = self.docker(host, "logs", name).stdout
        m = re.search(r"(\d+) packets received", out)
        return (int(m.group(1)) if m else 0), out

    def ip(self, host: str, name: str, network: str) -> str:
        fmt = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
        return self.docker(host, "inspect", "-f", fmt, name).stdout.strip()

    def ping(self, host: str, name: str, ip: str, count: int = 3) -> bool:
        r = self.docker(host, "exec", name, "ping", "-c", str(count), "-W", "2", ip, check=False)
        return r.returncode == 0

    def rm(self, host: str, name: str) -> None:
        self.docker(host, "rm", "-f", name)
        self.containers.remove((host, name))

    def cleanup(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda hc: self.docker(hc[0], "rm", "-f", hc[1], check=False),
                          self.containers))  # fmt: skip
        for h, n in self.networks:
            self.docker(h, "network", "rm", n, check=False)
        for n in self.heddle:
            with contextlib.suppress(NotFound):
                self.env.desired.remove_network(n, force=True)


@pytest.fixture
def dock(env: Env) -> Iterator[Dock]:
    d = Dock(env)
    try:
        yield d
    finally:
        d.cleanup()


def _keys(env: Env, prefix: str) -> list[str]:
    return [i.key for i in env.kv.list(prefix).items]


def _wait(cond: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_the_engine_asked_for_runs_and_sees_heddle_networks_as_local(env: Env, dock: Dock) -> None:
    """Each host runs the engine of this module's parameter; a heddle network is listed with
    the driver's scope (``local``: every daemon has its own network object) on both engines."""
    for h in HOSTS:
        version = dock.docker(h, "version", "-f", "{{.Server.Version}}").stdout.strip()
        assert version.startswith(env.engine), (h, version)
    dock.network("scoped", "10.28.0.0/24")
    for h in HOSTS:
        ls = dock.docker(h, "network", "ls", "--filter", "name=scoped",
                         "--format", "{{.Driver}} {{.Scope}}").stdout.split()  # fmt: skip
        assert ls == ["heddle", "local"], (h, ls)


def test_containers_on_two_hosts_share_one_overlay_and_networks_are_isolated(dock: Dock) -> None:
    dock.network("blue", "10.20.0.0/24")
    a = dock.run("h1", "ca", "blue")
    b = dock.run("h2", "cb", "blue")
    assert a != b
    assert dock.ping("h1", "ca", b)
    assert dock.ping("h2", "cb", a)
    # green overlaps blue's subnet on its own VNI: same addresses, separate segments
    dock.network("green", "10.20.0.0/24")
    g1 = dock.run("h1", "g1", "green", "--ip", "10.20.0.77")  # --ip needs --subnet on h1
    dock.run("h2", "g2", "green")
    assert dock.ping("h2", "g2", g1)
    assert not dock.ping("h2", "cb", "10.20.0.77", count=2)
    # the same heddle network with another subnet is a clear error
    r = dock.docker("h2", "network", "create", "-d", "heddle", "--ipam-driver", "heddle",
                    "-o", "heddle.network=blue", "--ipam-opt", "heddle.network=blue",
                    "--subnet", "10.99.0.0/24", "blue-other", check=False)  # fmt: skip
    assert r.returncode != 0
    assert "heddle network blue has subnet 10.20.0.0/24, not 10.99.0.0/24" in r.stderr


def test_an_ipv6_network_gives_containers_both_addresses_and_they_use_them(
    env: Env, dock: Dock
) -> None:
    """``docker network create --ipv6`` on a dual-stack heddle network: containers on two
    hosts get an address of each family from heddle's IPAM and reach each other over both."""
    env.desired.create_network("dual", "10.23.0.0/24", subnet6="fd00:23::/64")
    dock.heddle.append("dual")
    for i, h in enumerate(HOSTS):
        sub = ["--subnet", "10.23.0.0/24", "--subnet", "fd00:23::/64"] if i == 0 else []
        dock.networks.append((h, "dual"))
        dock.docker(h, "network", "create", "-d", "heddle", "--ipam-driver", "heddle", "--ipv6",
                    "-o", "heddle.network=dual", "--ipam-opt", "heddle.network=dual",
                    *sub, "dual")  # fmt: skip
    a = dock.run("h1", "d6a", "dual")
    b = dock.run("h2", "d6b", "dual")
    fmt = '{{(index .NetworkSettings.Networks "dual").GlobalIPv6Address}}'
    a6, b6 = (dock.docker(h, "inspect", "-f", fmt, n).stdout.strip()
              for h, n in (("h1", "d6a"), ("h2", "d6b")))  # fmt: skip
    assert a6.startswith("fd00:23::") and b6.startswith("fd00:23::") and a6 != b6
    eps = {e.ip: e for e in env.desired.endpoints("dual")}
    assert (eps[a].ip6, eps[b].ip6) == (a6, b6)
    assert dock.ping("h1", "d6a", b)
    for host, name, dst in (("h1", "d6a", b6), ("h2", "d6b", a6)):
        r = dock.docker(host, "exec", name, "ping", "-6", "-c", "3", "-W", "2", dst, check=False)
        assert r.returncode == 0, r.stdout + r.stderr


def test_rm_releases_the_address_and_the_veth_and_network_rm_leaves_nothing(
    env: Env, dock: Dock
) -> None:
    dock.network("red", "10.22.0.0/24")
    ip = dock.run("h1", "r1", "red")
    (ep,) = [e for e in env.desired.endpoints("red") if e.ip == ip]
    assert ep.host == "h1" and ep.netns is None
    h1 = env.lab.host("h1").netns
    host_if = veth_host_name("red", ep.id)
    assert host_if in {ln.name for ln in owned_links(h1)}
    if env.backend == "ovs":
        assert host_if in ovs_endpoint_ports(env.lab.ovs("h1"))
    dock.rm("h1", "r1")
    assert _keys(env, keys.ipam("red", ip)) == []
    assert _keys(env, keys.endpoint("red", ep.id)) == []
    gone = {host_if, veth_peer_name("red", ep.id)}
    assert _wait(lambda: not gone & {ln.name for ln in owned_links(h1)})
    vni = env.desired.get_network("red").vni
    for h in HOSTS:
        dock.docker(h, "network", "rm", "red")
    dock.networks.clear()
    env.desired.remove_network("red")
    for prefix in (keys.network("red"), keys.vni(vni), keys.ipam_of("red"),
                   keys.endpoints_of("red"), pkeys.DOCKER):  # fmt: skip
        assert _keys(env, prefix) == [], prefix
    assert _wait(lambda: all(not owned_links(env.lab.host(h).netns) for h in HOSTS))
    if env.backend == "ovs":  # and no OVS port of an endpoint either
        assert _wait(lambda: all(not ovs_endpoint_ports(env.lab.ovs(h)) for h in HOSTS))


def test_twenty_concurrent_containers_on_two_hosts_get_distinct_addresses(
    env: Env, dock: Dock
) -> None:
    dock.network("many", "10.23.0.0/24")
    jobs = [(HOSTS[i % 2], f"m{i}") for i in range(20)]
    dock.containers.extend(jobs)

    def start(job: tuple[str, str]) -> str:
        host, name = job
        dock.docker(host, "run", "-d", "--name", name, "--network", "many", IMAGE, "sleep", "3600")
        return dock.ip(host, name, "many")

    with ThreadPoolExecutor(20) as pool:
        ips = list(pool.map(start, jobs))
    assert len(set(ips)) == 20, ips
    recorded = {e.ip: e.host for e in env.desired.endpoints("many")}
    assert recorded == {ip: host for ip, (host, _) in zip(ips, jobs, strict=True)}
    assert dock.ping("h1", "m0", ips[19]) and dock.ping("h2", "m19", ips[0])


def test_agent_restart_keeps_containers_talking_and_new_ones_join(env: Env, dock: Dock) -> None:
    dock.network("agr", "10.24.0.0/24")
    a = dock.run("h1", "ca", "agr")
    b = dock.run("h2", "cb", "agr")
    dock.pinger("h2", "pb", "agr", a, count=50)  # ~8 s of pings across the restarts
    time.sleep(1.0)
    env.lab.agents.restart("h1")
    env.lab.agents.restart("h2")
    received, out = dock.pinged("h2", "pb")
    assert received >= 48, out
    c = dock.run("h1", "cc", "agr")
    assert dock.ping("h1", "cc", b) and dock.ping("h2", "cb", c)


def test_dockerd_restart_keeps_containers_talking_and_new_ones_join(env: Env, dock: Dock) -> None:
    dock.network("dkr", "10.25.0.0/24")
    a = dock.run("h1", "ca", "dkr")
    b = dock.run("h2", "cb", "dkr")
    dock.pinger("h2", "pb", "dkr", a, count=40)
    time.sleep(1.0)
    env.docker.restart_dockerd("h1")  # --live-restore: h1's containers keep running
    received, out = dock.pinged("h2", "pb")
    assert received >= 38, out
    assert dock.ping("h1", "ca", b)  # the restored container still talks
    c = dock.run("h1", "cc", "dkr")
    assert dock.ping("h1", "cc", b) and dock.ping("h2", "cb", c)


def test_a_plugin_call_with_a_broken_body_gets_a_clear_error_and_changes_nothing(
    env: Env, dock: Dock
) -> None:
    dock.network("brk", "10.26.0.0/24")
    dock.run("h1", "k1", "brk")
    volatile = (keys.STATUS, keys.ALIVE)

    def state() -> dict[str, bytes]:
        items = env.kv.list(keys.ROOT).items
        return {i.key: i.value for i in items if not i.key.startswith(volatile)}

    before = state()
    t = UnixTransport(str(env.docker.plugin_socket("h1")), timeout=10.0)
    try:
        for path, body, needle in [
            ("/NetworkDriver.CreateEndpoint", b'{"NetworkID": "ab', "not valid JSON"),
            ("/NetworkDriver.Join", b'{"NetworkID": "' + b"a" * 64 + b'"}', "EndpointID"),
            ("/IpamDriver.RequestAddress", b'{"Address": ""}', "PoolID"),
            ("/IpamDriver.RequestPool", b'{"Pool": "10.27.0.0/24"}', "heddle.network"),
            ("/NetworkDriver.CreateNetwork", b"[]", "JSON object"),
        ]:
            status, answer = t(path, body)
            assert status == 400, (path, answer)
            assert needle in (answer.get("Err") or ""), (path, answer)
    finally:
        t.close()
    assert state() == before
    assert dock.run("h2", "k2", "brk")  # and the plugin still serves


def test_docker_lab_down_is_complete(tmp_path: Path) -> None:
    """The harness itself: a second DockerLab on a stopped lab is a clear error, not a mess."""
    lab = Lab(tmp_path / "nolab", prefix="hldx")
    with pytest.raises(LabError):
        DockerLab(lab).start()
    assert not DockerLab(lab).base.exists()

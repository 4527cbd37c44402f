"""The plugin's handlers on MemoryKV, driven with dockerd's call sequences (``DockerLike``).

Two "hosts" share one store, as two dockerds with their agents' plugins share etcd. Assertions
are on the end state in the store (records, IPAM keys, mappings) and on the answers.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from unittest.mock import ANY

import pytest

from controller.desired import DesiredState
from controller.model import codec
from controller.model.naming import derive_mac, veth_peer_name
from controller.model.records import Host
from controller.plugin import keys as pkeys
from controller.plugin.client import DockerLike, DockerNet, PluginCallError, in_process, new_id
from controller.plugin.ipam_driver import IpamDriver
from controller.plugin.network_driver import NetworkDriver
from controller.plugin.routes import build_routes
from controller.store import keys
from controller.store.memory import MemoryKV

Waiter = Callable[[str, str, float], bool]


class Ready:
    """A fake readiness seam: ready unless told otherwise; records what Join waited for."""

    def __init__(self, ready: bool = True) -> None:
        self.ready = ready
        self.waited: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()

    def __call__(self, network: str, endpoint_id: str, timeout: float) -> bool:
        with self._lock:
            self.waited.append((network, endpoint_id, timeout))
        return self.ready


class World:
    def __init__(self) -> None:
        self.kv = MemoryKV()
        self.ready = Ready()
        for h in ("h1", "h2"):
            self.kv.put_raw(keys.host(h), codec.encode_host(Host(h, f"172.31.253.{h[1]}")))

    def docker(self, host: str, waiter: Waiter | None = None) -> DockerLike:
        routes = build_routes(
            NetworkDriver(self.kv, host, waiter or self.ready, join_timeout=0.5),
            IpamDriver(self.kv, host),
        )
        return DockerLike(in_process(routes))

    def dump(self, prefix: str = keys.ROOT) -> dict[str, str]:
        return {i.key: i.value.decode() for i in self.kv.list(prefix).items}

    def owner(self, network: str, ip: str) -> str | None:
        got = self.kv.get(keys.ipam(network, ip))
        return None if got is None else codec.decode_owner(got.value)


@pytest.fixture
def world() -> World:
    return World()


def test_create_run_stop_rm_then_heddle_rm_leaves_nothing(world: World) -> None:
    d1 = world.docker("h1")
    d1.activate()
    net = d1.network_create("blue", "10.20.0.0/24")
    assert net.pool_id == "heddle/blue/10.20.0.0/24"
    assert net.gateway == "10.20.0.1/24"
    blue = DesiredState(world.kv).get_network("blue")
    assert (blue.subnet, blue.gateway) == ("10.20.0.0/24", "10.20.0.1")

    c = d1.run(net)
    eid = c.endpoint_id[:12]
    assert c.address == "10.20.0.2/24"
    assert c.mac == derive_mac(blue.vni, "10.20.0.2")
    assert c.src_name == veth_peer_name("blue", eid)
    assert c.gateway == "10.20.0.1"
    ep = DesiredState(world.kv).get_endpoint("blue", eid)
    assert (ep.host, ep.ip, ep.mac, ep.netns) == ("h1", "10.20.0.2", c.mac, None)
    assert world.owner("blue", "10.20.0.2") == "docker@h1"
    assert world.ready.waited == [("blue", eid, 0.5)]
    assert set(world.dump(pkeys.of_host("h1"))) == {
        pkeys.network("h1", net.network_id),
        pkeys.endpoint("h1", c.endpoint_id),
    }

    d1.stop(net, c)
    assert DesiredState(world.kv).endpoints("blue") == []
    assert world.owner("blue", "10.20.0.2") is None
    d1.network_rm(net)
    assert world.dump(pkeys.DOCKER) == {}
    assert set(world.dump()) == {keys.network("blue"), keys.vni(blue.vni)} | {
        keys.host("h1"),
        keys.host("h2"),
    }
    DesiredState(world.kv).remove_network("blue")
    assert set(world.dump()) == {keys.host("h1"), keys.host("h2")}


def test_second_host_joins_the_same_overlay_without_subnet(world: World) -> None:
    d1, d2 = world.docker("h1"), world.docker("h2")
    n1 = d1.network_create("blue", "10.20.0.0/24")
    n2 = d2.network_create("blue")  # RequestPool Data carries the gateway: no gateway request
    assert (n2.pool_id, n2.gateway) == (n1.pool_id, n1.gateway)
    assert n2.network_id != n1.network_id
    c1, c2 = d1.run(n1), d2.run(n2)
    assert {c1.ip, c2.ip} == {"10.20.0.2", "10.20.0.3"}
    assert c2.gateway == "10.20.0.1"
    hosts = {e.ip: e.host for e in DesiredState(world.kv).endpoints("blue")}
    assert hosts == {c1.ip: "h1", c2.ip: "h2"}
    assert len(DesiredState(world.kv).networks()) == 1


def test_a_different_subnet_for_an_existing_network_is_a_clear_error(world: World) -> None:
    world.docker("h1").network_create("blue", "10.20.0.0/24")
    before = world.dump()
    with pytest.raises(PluginCallError) as err:
        world.docker("h2").network_create("blue", "10.99.0.0/24")
    assert err.value.status == 409
    assert "has subnet 10.20.0.0/24, not 10.99.0.0/24" in err.value.body["Error"]
    assert world.dump() == before


def test_no_subnet_and_no_network_is_a_clear_error(world: World) -> None:
    with pytest.raises(PluginCallError) as err:
        world.docker("h1").network_create("blue")
    assert "heddle network blue does not exist: pass --subnet" in str(err.value)
    assert world.dump(keys.NETWORKS) == {}


def test_requested_gateway_is_used_first_and_checked_later(world: World) -> None:
    d1, d2 = world.docker("h1"), world.docker("h2")
    net = d1.network_create("green", "10.30.0.0/24", gateway="10.30.0.254")
    assert net.gateway == "10.30.0.254/24"
    assert DesiredState(world.kv).get_network("green").gateway == "10.30.0.254"
    assert d2.network_create("green", gateway="10.30.0.254").gateway == "10.30.0.254/24"
    with pytest.raises(
        PluginCallError, match=re.escape("has gateway 10.30.0.254; --gateway 10.30.0.1")
    ):
        d2.network_create("green", gateway="10.30.0.1")
    assert d1.run(net).ip == "10.30.0.1"  # the record's gateway is excluded, .1 is free


def test_cli_network_without_gateway_gets_one_reserved_network_wide(world: World) -> None:
    DesiredState(world.kv).create_network("red", "10.40.0.0/24")
    d1, d2 = world.docker("h1"), world.docker("h2")
    n1 = d1.network_create("red")
    assert n1.gateway == "10.40.0.1/24"
    assert world.owner("red", "10.40.0.1") == "gateway@docker"
    n2 = d2.network_create("red")  # learns it from RequestPool's Data
    assert n2.gateway == "10.40.0.1/24"
    assert {d1.run(n1).ip, d2.run(n2).ip} == {"10.40.0.2", "10.40.0.3"}
    d1.network_rm(n1)  # h2 still routes through the gateway: it stays reserved
    assert world.owner("red", "10.40.0.1") == "gateway@docker"


def test_concurrent_gateway_requests_on_a_gateway_less_network_agree(world: World) -> None:
    DesiredState(world.kv).create_network("red", "10.40.0.0/24")
    dockers = [world.docker(h) for h in ("h1", "h2") for _ in range(4)]
    with ThreadPoolExecutor(8) as pool:
        nets = list(pool.map(lambda d: d.network_create("red"), dockers))
    assert {n.gateway for n in nets} == {"10.40.0.1/24"}
    owners = [v for v in world.dump(keys.ipam_of("red")).values()]
    assert owners == ['"gateway@docker"']


def test_every_handler_is_idempotent(world: World) -> None:
    d1 = world.docker("h1")
    net = d1.network_create("blue", "10.20.0.0/24")
    nid = {"NetworkID": net.network_id}
    create = {
        **nid,
        "Options": {"com.docker.network.generic": {"heddle.network": "blue"}},
        "IPv4Data": [{"AddressSpace": "heddle", "Pool": "10.20.0.0/24", "Gateway": net.gateway}],
    }
    assert d1.call("/NetworkDriver.CreateNetwork", create) == {}  # repeated
    c = d1.run(net)
    ids = {**nid, "EndpointID": c.endpoint_id}
    iface = {"Address": c.address, "AddressIPv6": "", "MacAddress": ""}
    again = d1.call("/NetworkDriver.CreateEndpoint", {**ids, "Interface": iface})
    assert again == {"Interface": {"MacAddress": c.mac}}
    assert d1.call("/NetworkDriver.Join", ids)["InterfaceName"]["SrcName"] == c.src_name
    state = world.dump()
    for path in (
        "/NetworkDriver.ProgramExternalConnectivity",
        "/NetworkDriver.EndpointOperInfo",
        "/NetworkDriver.RevokeExternalConnectivity",
        "/NetworkDriver.Leave",
        "/NetworkDriver.Leave",
    ):
        d1.call(path, ids)
    assert world.dump() == state
    for _ in range(2):
        d1.call("/NetworkDriver.DeleteEndpoint", ids)
        d1.call("/IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": c.ip})
    assert d1.call("/NetworkDriver.EndpointOperInfo", ids) == {"Value": {}}
    for _ in range(2):
        d1.network_rm(net)
    assert world.dump(pkeys.DOCKER) == {}
    assert DesiredState(world.kv).get_network("blue").gateway == "10.20.0.1"


def test_oper_info_describes_the_endpoint(world: World) -> None:
    d1 = world.docker("h1")
    net = d1.network_create("blue", "10.20.0.0/24")
    c = d1.run(net)
    value = d1.call(
        "/NetworkDriver.EndpointOperInfo",
        {"NetworkID": net.network_id, "EndpointID": c.endpoint_id},
    )["Value"]
    assert value["heddle.network"] == "blue"
    assert value["heddle.endpoint"] == c.endpoint_id[:12]
    assert (value["ip"], value["mac"]) == (c.ip, c.mac)
    assert value["host_if"].startswith("hdv")


def test_what_the_plugin_remembers_answers_as_etcd_would(world: World) -> None:
    """OperInfo from the memo of CreateEndpoint equals a fresh plugin's (which reads etcd)."""
    d1 = world.docker("h1")
    net = d1.network_create("blue", "10.20.0.0/24")
    c = d1.run(net)
    body = {"NetworkID": net.network_id, "EndpointID": c.endpoint_id}
    remembered = d1.call("/NetworkDriver.EndpointOperInfo", body)["Value"]
    fresh = world.docker("h1").call("/NetworkDriver.EndpointOperInfo", body)["Value"]
    assert remembered == fresh


@pytest.mark.parametrize("change", ["endpoint rewritten", "mapping rewritten", "none"])
def test_delete_endpoint_cleans_up_even_after_someone_changed_the_records(
    world: World, change: str
) -> None:
    """DeleteEndpoint's one guarded transaction fails when the records changed since
    CreateEndpoint; it then reads and deletes as without the memo."""
    d1 = world.docker("h1")
    net = d1.network_create("blue", "10.20.0.0/24")
    c = d1.run(net)
    eid = c.endpoint_id[:12]
    if change == "endpoint rewritten":
        key = keys.endpoint("blue", eid)
        got = world.kv.get(key)
        assert got is not None
        world.kv.put_raw(key, got.value)  # same value, new revision
    elif change == "mapping rewritten":
        key = pkeys.endpoint("h1", c.endpoint_id)
        got = world.kv.get(key)
        assert got is not None
        world.kv.put_raw(key, got.value)
    d1.stop(net, c)
    assert DesiredState(world.kv).endpoints("blue") == []
    assert world.dump(pkeys.of_host("h1")) == {pkeys.network("h1", net.network_id): ANY}
    assert world.owner("blue", c.ip) is None


def test_join_fails_clearly_when_the_agent_builds_nothing_and_docker_rolls_back(
    world: World,
) -> None:
    d1 = world.docker("h1", Ready(ready=False))
    net = d1.network_create("blue", "10.20.0.0/24")
    with pytest.raises(PluginCallError) as err:
        d1.run(net)
    assert "did not create the interface of endpoint blue/" in err.value.body["Err"]
    assert "within 0.5 s" in err.value.body["Err"]
    # dockerd's rollback (DeleteEndpoint, ReleaseAddress) left nothing of the container
    assert DesiredState(world.kv).endpoints("blue") == []
    assert world.dump(keys.ipam_of("blue")) == {}
    assert set(world.dump(pkeys.DOCKER)) == {pkeys.network("h1", net.network_id)}


def test_a_mac_given_by_docker_is_kept_and_not_echoed(world: World) -> None:
    d1 = world.docker("h1")
    net = d1.network_create("blue", "10.20.0.0/24")
    c = d1.run(net, mac="02:42:AC:11:00:05")
    assert c.mac == "02:42:AC:11:00:05"  # the answer had no Interface: Docker's MAC stands
    assert (
        DesiredState(world.kv).get_endpoint("blue", c.endpoint_id[:12]).mac == "02:42:ac:11:00:05"
    )


def test_requested_addresses_are_unique_cluster_wide(world: World) -> None:
    d1, d2 = world.docker("h1"), world.docker("h2")
    n1 = d1.network_create("blue", "10.20.0.0/24")
    n2 = d2.network_create("blue")
    assert d1.run(n1, ip="10.20.0.50").ip == "10.20.0.50"
    before = world.dump()
    with pytest.raises(PluginCallError) as err:
        d2.run(n2, ip="10.20.0.50")
    assert err.value.status == 409
    assert "10.20.0.50 in network blue is already in use by 'docker@h1'" in str(err.value)
    with pytest.raises(PluginCallError, match="is the gateway"):
        d2.run(n2, ip="10.20.0.1")
    with pytest.raises(PluginCallError, match="outside subnet"):
        d2.run(n2, ip="10.21.0.9")
    assert world.dump() == before
    # a CLI endpoint and a Docker endpoint never share an address either
    cli = DesiredState(world.kv).create_endpoint("blue", "h2", netns="x")
    assert cli.ip == "10.20.0.2"
    assert d2.run(n2).ip == "10.20.0.3"


def test_concurrent_runs_on_two_hosts_get_distinct_addresses(world: World) -> None:
    d1, d2 = world.docker("h1"), world.docker("h2")
    n1 = d1.network_create("blue", "10.20.0.0/24")
    n2 = d2.network_create("blue")
    jobs = [(d1, n1), (d2, n2)] * 10
    with ThreadPoolExecutor(10) as pool:
        containers = list(pool.map(lambda j: (j, j[0].run(j[1])), jobs))
    ips = [c.ip for _, c in containers]
    assert len(set(ips)) == 20
    assert len(DesiredState(world.kv).endpoints("blue")) == 20
    assert {world.owner("blue", ip) for ip in ips} == {"docker@h1", "docker@h2"}
    placed = {k.rsplit("/", 3)[1] for k in world.dump(keys.PLACEMENT)}
    assert len(world.dump(keys.PLACEMENT)) == 20 and placed == {"h1", "h2"}
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda jc: jc[0][0].stop(jc[0][1], jc[1]), containers))
    assert world.dump(keys.ipam_of("blue")) == {}
    assert world.dump(keys.ENDPOINTS) == world.dump(keys.PLACEMENT) == {}
    assert world.dump(pkeys.endpoints_of("h1")) == world.dump(pkeys.endpoints_of("h2")) == {}


def test_concurrent_duplicate_create_endpoint_calls_write_one_endpoint(world: World) -> None:
    d1 = world.docker("h1")
    net = d1.network_create("blue", "10.20.0.0/24")
    address = d1.call("/IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ""})
    body = {
        "NetworkID": net.network_id,
        "EndpointID": new_id(),
        "Interface": {"Address": address["Address"], "MacAddress": ""},
    }
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: d1.call("/NetworkDriver.CreateEndpoint", body), range(8)))
    assert len({str(a) for a in answers}) == 1
    assert len(DesiredState(world.kv).endpoints("blue")) == 1


def test_a_full_pool_is_a_clear_error_and_writes_nothing(world: World) -> None:
    d1 = world.docker("h1")
    net = d1.network_create("tiny", "10.50.0.0/30")  # .1 gateway, .2 the only address
    d1.run(net)
    before = world.dump()
    with pytest.raises(PluginCallError) as err:
        d1.run(net)
    assert "no free address left" in str(err.value)
    assert world.dump() == before


def test_endpoint_id_collision_takes_a_longer_id(world: World) -> None:
    d1 = world.docker("h1")
    net = d1.network_create("blue", "10.20.0.0/24")
    docker_eid = "c0ffee" * 10 + "abcd"
    DesiredState(world.kv).create_endpoint("blue", "h2", netns="x", endpoint_id=docker_eid[:12])
    address = d1.call("/IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ""})
    ids = {"NetworkID": net.network_id, "EndpointID": docker_eid}
    d1.call("/NetworkDriver.CreateEndpoint", {**ids, "Interface": {"Address": address["Address"]}})
    src = d1.call("/NetworkDriver.Join", ids)["InterfaceName"]["SrcName"]
    assert src == veth_peer_name("blue", docker_eid[:16])
    assert DesiredState(world.kv).get_endpoint("blue", docker_eid[:16]).host == "h1"


def test_release_address_frees_only_this_hosts_reservation(world: World) -> None:
    d1, d2 = world.docker("h1"), world.docker("h2")
    n1 = d1.network_create("blue", "10.20.0.0/24")
    n2 = d2.network_create("blue")
    c = d1.run(n1)
    d2.call("/IpamDriver.ReleaseAddress", {"PoolID": n2.pool_id, "Address": c.ip})
    d2.call("/IpamDriver.ReleaseAddress", {"PoolID": n2.pool_id, "Address": "10.20.0.1"})
    assert world.owner("blue", c.ip) == "docker@h1"
    assert DesiredState(world.kv).get_network("blue").gateway == "10.20.0.1"


def test_a_network_removed_under_docker_fails_runs_clearly_and_lets_docker_clean_up(
    world: World,
) -> None:
    d1 = world.docker("h1")
    net = d1.network_create("blue", "10.20.0.0/24")
    c = d1.run(net)
    DesiredState(world.kv).remove_network("blue", force=True)
    with pytest.raises(PluginCallError, match="does not exist any more"):
        d1.run(net)
    d1.stop(net, c)
    d1.network_rm(net)
    assert world.dump(pkeys.DOCKER) == {}
    assert world.dump(keys.ENDPOINTS) == {} and world.dump(keys.IPAM) == {}


def test_ipam_and_network_options_naming_different_networks_are_refused(world: World) -> None:
    d1 = world.docker("h1")
    d1.network_create("blue", "10.20.0.0/24")
    green = d1.network_create("green", "10.20.0.0/24")  # same subnet, other network
    # CreateNetwork of a Docker network with -o heddle.network=blue but green's pool: allowed
    # (same subnet) -- but its endpoints' addresses are not reserved in blue: refused.
    nid = new_id()
    d1.call(
        "/NetworkDriver.CreateNetwork",
        {
            "NetworkID": nid,
            "Options": {"com.docker.network.generic": {"heddle.network": "blue"}},
            "IPv4Data": [{"AddressSpace": "heddle", "Pool": "10.20.0.0/24", "Gateway": ""}],
        },
    )
    address = d1.call("/IpamDriver.RequestAddress", {"PoolID": green.pool_id, "Address": ""})
    before = world.dump()
    with pytest.raises(PluginCallError) as err:
        d1.call(
            "/NetworkDriver.CreateEndpoint",
            {
                "NetworkID": nid,
                "EndpointID": new_id(),
                "Interface": {"Address": address["Address"]},
            },
        )
    assert "not reserved by this host's dockerd" in str(err.value)
    assert world.dump() == before
    # different subnets are caught at CreateNetwork already
    with pytest.raises(
        PluginCallError, match=re.escape("has subnet 10.20.0.0/24, but Docker's pool")
    ):
        d1.call(
            "/NetworkDriver.CreateNetwork",
            {
                "NetworkID": new_id(),
                "Options": {"com.docker.network.generic": {"heddle.network": "blue"}},
                "IPv4Data": [{"AddressSpace": "heddle", "Pool": "10.77.0.0/24"}],
            },
        )


@pytest.mark.parametrize(
    ("create", "needle"),
    [
        ({"IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.20.0.0/24"}]},
         "--ipam-driver heddle"),
        ({}, "exactly one IPv4 subnet, got 0"),
        ({"IPv4Data": [{"AddressSpace": "heddle", "Pool": "10.20.0.0/24"}],
          "IPv6Data": [{"AddressSpace": "heddle", "Pool": "fd00::/64"}]},
         "create the Docker network without --ipv6"),
    ],
)  # fmt: skip
def test_create_network_refusals_write_nothing(
    world: World, create: dict[str, object], needle: str
) -> None:
    d1 = world.docker("h1")
    d1.network_create("blue", "10.20.0.0/24")
    before = world.dump()
    body = {
        "NetworkID": new_id(),
        "Options": {"com.docker.network.generic": {"heddle.network": "blue"}},
        **create,
    }
    with pytest.raises(PluginCallError, match=needle):
        d1.call("/NetworkDriver.CreateNetwork", body)
    assert world.dump() == before


def test_missing_network_option_names_it(world: World) -> None:
    d1 = world.docker("h1")
    with pytest.raises(PluginCallError) as err:
        d1.call("/NetworkDriver.CreateNetwork", {"NetworkID": new_id(), "Options": {}})
    assert err.value.status == 400
    assert "missing option heddle.network" in err.value.body["Err"]
    with pytest.raises(PluginCallError, match="for --ipv6 create it first"):
        d1.call("/IpamDriver.RequestPool", {"Options": {"heddle.network": "b"}, "V6": True})
    with pytest.raises(PluginCallError, match="is not a valid name"):
        d1.call("/IpamDriver.RequestPool", {"Options": {"heddle.network": "Blue!"}})


def test_unknown_docker_objects_are_clear_errors(world: World) -> None:
    d1 = world.docker("h1")
    net = d1.network_create("blue", "10.20.0.0/24")
    ghost = DockerNet("blue", new_id(), net.pool_id, net.gateway)
    with pytest.raises(PluginCallError, match="is not known to heddle on host h1"):
        d1.run(ghost)
    assert world.dump(keys.ipam_of("blue")) == {}  # the rollback released the address
    with pytest.raises(PluginCallError, match="is not known to heddle on host h1"):
        d1.call("/NetworkDriver.Join", {"NetworkID": net.network_id, "EndpointID": new_id()})


def test_a_dual_stack_network_with_ipv6_gives_containers_both_addresses(world: World) -> None:
    """dockerd's sequence for ``docker network create --ipv6 --subnet V4 --subnet V6`` and a
    ``docker run`` on it: both pools are the heddle network's, both gateways reserved, the
    endpoint record holds both addresses (each reserved by this host's dockerd), Join names
    both gateways."""
    DesiredState(world.kv).create_network("ds", "10.40.0.0/24", subnet6="fd00:40::/64")
    d1 = world.docker("h1")
    opts = {"heddle.network": "ds"}
    pools, gateways = {}, {}
    for six, subnet in ((False, "10.40.0.0/24"), (True, "fd00:40::/64")):
        pool = d1.call("/IpamDriver.RequestPool", {"AddressSpace": "heddle", "Pool": subnet,
                                                   "Options": opts, "V6": six})  # fmt: skip
        assert pool["Pool"] == subnet
        pools[six] = pool["PoolID"]
        gateways[six] = d1.call("/IpamDriver.RequestAddress", {
            "PoolID": pool["PoolID"], "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"},
        })["Address"]  # fmt: skip
    assert gateways == {False: "10.40.0.1/24", True: "fd00:40::1/64"}
    assert world.owner("ds", "fd00:40::1") == "gateway@docker"
    network_id = new_id()
    d1.call("/NetworkDriver.CreateNetwork", {
        "NetworkID": network_id,
        "Options": {"com.docker.network.generic": opts},
        "IPv4Data": [{"AddressSpace": "heddle", "Gateway": gateways[False],
                      "Pool": "10.40.0.0/24"}],
        "IPv6Data": [{"AddressSpace": "heddle", "Gateway": gateways[True],
                      "Pool": "fd00:40::/64"}],
    })  # fmt: skip
    four, six = (
        d1.call("/IpamDriver.RequestAddress", {"PoolID": pools[f], "Address": ""})["Address"]
        for f in (False, True)
    )
    assert (four, six) == ("10.40.0.2/24", "fd00:40::2/64")
    eid = new_id()
    d1.call("/NetworkDriver.CreateEndpoint", {
        "NetworkID": network_id, "EndpointID": eid,
        "Interface": {"Address": four, "AddressIPv6": six, "MacAddress": ""},
    })  # fmt: skip
    [ep] = DesiredState(world.kv).endpoints("ds")
    assert (ep.ip, ep.ip6, ep.host) == ("10.40.0.2", "fd00:40::2", "h1")
    joined = d1.call("/NetworkDriver.Join", {"NetworkID": network_id, "EndpointID": eid,
                                              "SandboxKey": "/var/run/docker/netns/x"})  # fmt: skip
    assert (joined["Gateway"], joined["GatewayIPv6"]) == ("10.40.0.1", "fd00:40::1")
    # Without --ipv6 the dual-stack network is refused: its containers would lack IPv6.
    with pytest.raises(PluginCallError, match="with --ipv6 and its IPv6 --subnet"):
        d1.call("/NetworkDriver.CreateNetwork", {
            "NetworkID": new_id(), "Options": {"com.docker.network.generic": opts},
            "IPv4Data": [{"AddressSpace": "heddle", "Gateway": gateways[False],
                          "Pool": "10.40.0.0/24"}],
        })  # fmt: skip
    with pytest.raises(PluginCallError, match="has IPv6 subnet fd00:40::/64, not fd00:41::/64"):
        d1.call("/IpamDriver.RequestPool", {"AddressSpace": "heddle", "Pool": "fd00:41::/64",
                                            "Options": opts, "V6": True})  # fmt: skip

"""The plugin's routing table and dispatcher: every remote-API method is routed; errors have the
interface's shape and status; a malformed body gets a 400 naming the field and writes nothing."""

from __future__ import annotations

import json

import pytest

from controller.model import codec
from controller.model.records import Host
from controller.plugin.ipam_driver import IpamDriver
from controller.plugin.network_driver import NetworkDriver
from controller.plugin.routes import Route, build_routes, dispatch
from controller.store import keys
from controller.store.memory import MemoryKV

# The whole remote API, from the issue (libnetwork remote driver + IPAM driver), written out
# independently of the table so that a missing route fails here.
REMOTE_API = {
    "/Plugin.Activate",
    "/NetworkDriver.GetCapabilities",
    "/NetworkDriver.CreateNetwork",
    "/NetworkDriver.DeleteNetwork",
    "/NetworkDriver.CreateEndpoint",
    "/NetworkDriver.DeleteEndpoint",
    "/NetworkDriver.EndpointOperInfo",
    "/NetworkDriver.Join",
    "/NetworkDriver.Leave",
    "/NetworkDriver.DiscoverNew",
    "/NetworkDriver.DiscoverDelete",
    "/NetworkDriver.GwAllocCheck",
    "/NetworkDriver.ProgramExternalConnectivity",
    "/NetworkDriver.RevokeExternalConnectivity",
    "/IpamDriver.GetCapabilities",
    "/IpamDriver.GetDefaultAddressSpaces",
    "/IpamDriver.RequestPool",
    "/IpamDriver.ReleasePool",
    "/IpamDriver.RequestAddress",
    "/IpamDriver.ReleaseAddress",
}
ARGUMENT_LESS = {  # and those whose arguments are all optional
    "/Plugin.Activate",
    "/NetworkDriver.GwAllocCheck",
    "/NetworkDriver.GetCapabilities",
    "/IpamDriver.GetCapabilities",
    "/IpamDriver.GetDefaultAddressSpaces",
}
NID, EID = "a" * 64, "b" * 64


def _always_ready(network: str, endpoint_id: str, timeout: float) -> bool:
    return True


@pytest.fixture
def kv() -> MemoryKV:
    kv = MemoryKV()
    kv.put_raw(keys.host("h1"), codec.encode_host(Host("h1", "172.31.253.1")))
    return kv


@pytest.fixture
def routes(kv: MemoryKV) -> dict[str, Route]:
    return dict(build_routes(NetworkDriver(kv, "h1", _always_ready), IpamDriver(kv, "h1")))


def dump(kv: MemoryKV) -> dict[str, bytes]:
    return {i.key: i.value for i in kv.list("/").items}


def test_every_remote_api_method_is_routed(routes: dict[str, Route]) -> None:
    assert set(routes) == REMOTE_API
    for path, route in routes.items():
        assert path.startswith(f"/{route.interface}.")


@pytest.mark.parametrize("path", sorted(ARGUMENT_LESS))
def test_argument_less_calls_accept_an_empty_body(routes: dict[str, Route], path: str) -> None:
    for body in (b"", b"null\n", b"{}"):
        assert dispatch(routes, path, body).status == 200


def test_handshake_and_capabilities(routes: dict[str, Route]) -> None:
    assert dispatch(routes, "/Plugin.Activate", b"").body == {
        "Implements": ["NetworkDriver", "IpamDriver"]
    }
    assert dispatch(routes, "/NetworkDriver.GetCapabilities", b"").body == {
        "Scope": "local",
        "ConnectivityScope": "global",
        "GwAllocChecker": True,
    }
    # Docker 28+ then asks before each network: heddle keeps its gateway reserved
    gw = dispatch(
        routes,
        "/NetworkDriver.GwAllocCheck",
        b'{"Options": {"com.docker.network.generic": {"heddle.network": "b"}}}',
    )
    assert (gw.status, gw.body) == (200, {"SkipIPv4": False, "SkipIPv6": False})
    # unknown fields are ignored, unknown methods are 404 (libnetwork's "not implemented")
    assert dispatch(routes, "/NetworkDriver.GetCapabilities", b'{"New": 1}').status == 200
    assert dispatch(routes, "/NetworkDriver.SomethingNew", b"{}").status == 404
    assert dispatch(routes, "/IpamDriver.GetCapabilities", b"").body == {
        "RequiresMACAddress": False,
        "RequiresRequestReplay": False,
    }
    spaces = dispatch(routes, "/IpamDriver.GetDefaultAddressSpaces", b"").body
    assert spaces == {
        "LocalDefaultAddressSpace": "heddle",
        "GlobalDefaultAddressSpace": "heddle-global",
    }


def test_unknown_method_is_404_in_the_interface_style(routes: dict[str, Route]) -> None:
    reply = dispatch(routes, "/NetworkDriver.AllocateNetwork", b"{}")
    assert reply.status == 404
    assert "AllocateNetwork" in reply.body["Err"]
    ipam = dispatch(routes, "/IpamDriver.Nope", b"")
    assert ipam.status == 404
    assert "Nope" in ipam.body["Error"]


# For each method with arguments: a body missing a required field, and the field's name.
MISSING = {
    "/NetworkDriver.CreateNetwork": ({"Options": {}}, "NetworkID"),
    "/NetworkDriver.DeleteNetwork": ({}, "NetworkID"),
    "/NetworkDriver.CreateEndpoint": ({"NetworkID": NID}, "EndpointID"),
    "/NetworkDriver.DeleteEndpoint": ({"NetworkID": NID}, "EndpointID"),
    "/NetworkDriver.EndpointOperInfo": ({"EndpointID": EID}, "NetworkID"),
    "/NetworkDriver.Join": ({"NetworkID": NID}, "EndpointID"),
    "/NetworkDriver.Leave": ({"NetworkID": NID}, "EndpointID"),
    "/NetworkDriver.DiscoverNew": ({"DiscoveryData": {}}, "DiscoveryType"),
    "/NetworkDriver.DiscoverDelete": ({}, "DiscoveryType"),
    "/NetworkDriver.ProgramExternalConnectivity": ({"NetworkID": NID}, "EndpointID"),
    "/NetworkDriver.RevokeExternalConnectivity": ({"EndpointID": EID}, "NetworkID"),
    "/IpamDriver.RequestPool": ({"Pool": "10.0.0.0/24", "Options": {}}, "heddle.network"),
    "/IpamDriver.ReleasePool": ({}, "PoolID"),
    "/IpamDriver.RequestAddress": ({"Address": ""}, "PoolID"),
    "/IpamDriver.ReleaseAddress": ({"PoolID": "heddle/blue/10.0.0.0/24"}, "Address"),
}


def test_missing_table_covers_every_method_with_arguments() -> None:
    assert set(MISSING) == REMOTE_API - ARGUMENT_LESS


@pytest.mark.parametrize("path", sorted(MISSING))
def test_missing_field_is_400_naming_it_and_writes_nothing(
    kv: MemoryKV, routes: dict[str, Route], path: str
) -> None:
    body, field = MISSING[path]
    before = dump(kv)
    reply = dispatch(routes, path, json.dumps(body).encode())
    key = "Error" if path.startswith("/IpamDriver.") else "Err"
    assert reply.status == 400, reply
    assert field in reply.body[key]
    assert dump(kv) == before


@pytest.mark.parametrize("path", sorted(REMOTE_API - ARGUMENT_LESS))
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"NetworkID": ', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_malformed_body_is_400_and_writes_nothing(
    kv: MemoryKV, routes: dict[str, Route], path: str, body: bytes, needle: str
) -> None:
    before = dump(kv)
    reply = dispatch(routes, path, body)
    assert reply.status == 400
    assert needle in (reply.body.get("Err") or "")
    assert dump(kv) == before


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/NetworkDriver.DeleteNetwork", {"NetworkID": 7}, "NetworkID must be a string"),
        ("/NetworkDriver.DeleteNetwork", {"NetworkID": ""}, "NetworkID must not be empty"),
        ("/NetworkDriver.DeleteNetwork", {"NetworkID": "../../x"}, "NetworkID"),
        ("/NetworkDriver.Leave", {"NetworkID": NID, "EndpointID": "ABC" * 20}, "EndpointID"),
        ("/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                           "Interface": []}, "Interface must be an object"),
        ("/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                           "Interface": {"Address": 5}}, "Interface.Address"),
        ("/NetworkDriver.CreateNetwork", {"NetworkID": NID, "IPv4Data": {}}, "IPv4Data"),
        ("/NetworkDriver.CreateNetwork", {"NetworkID": NID, "IPv4Data": [{}]}, "IPv4Data[0].Pool"),
        ("/NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": {
            "com.docker.network.generic": {"heddle.network": 3}}}, "heddle.network"),
        ("/NetworkDriver.DiscoverNew", {"DiscoveryType": "1"}, "DiscoveryType"),
        ("/IpamDriver.RequestPool", {"Options": {"heddle.network": "b"}, "V6": "no"}, "V6"),
        ("/IpamDriver.RequestAddress", {"PoolID": "default/10.0.0.0/24"}, "PoolID"),
        ("/IpamDriver.RequestAddress", {"PoolID": "heddle/blue/10.0.0.0/24",
                                        "Address": "10.0.0.300"}, "Address"),
        ("/IpamDriver.ReleaseAddress", {"PoolID": "heddle/Blue/10.0.0.0/24",
                                        "Address": "10.0.0.3"}, "PoolID"),
    ],
)  # fmt: skip
def test_ill_typed_fields_are_400_naming_the_field(
    kv: MemoryKV, routes: dict[str, Route], path: str, body: object, needle: str
) -> None:
    before = dump(kv)
    reply = dispatch(routes, path, json.dumps(body).encode())
    assert reply.status == 400, reply
    assert needle in reply.body["Err"]
    assert dump(kv) == before


def test_store_unavailable_is_503_with_the_reason(kv: MemoryKV, routes: dict[str, Route]) -> None:
    kv.available = False
    reply = dispatch(
        routes, "/NetworkDriver.DeleteNetwork", json.dumps({"NetworkID": NID}).encode()
    )
    assert reply.status == 503
    assert "unavailable" in reply.body["Err"]
    ipam = dispatch(routes, "/IpamDriver.RequestPool", b'{"Options":{"heddle.network":"b"}}')
    assert ipam.status == 503
    assert ipam.body["Error"] == ipam.body["Err"]


def test_a_bug_in_a_handler_is_a_500_not_a_crash(kv: MemoryKV) -> None:
    def broken(network: str, endpoint_id: str, timeout: float) -> bool:
        raise RuntimeError("boom")

    routes = build_routes(NetworkDriver(kv, "h1", broken), IpamDriver(kv, "h1"))
    # Join needs a known endpoint to reach the waiter; the simplest path to a bug is a
    # waiter that raises, reached through a full sequence.
    from controller.plugin.client import DockerLike, PluginCallError, in_process

    docker = DockerLike(in_process(routes))
    net = docker.network_create("blue", "10.20.0.0/24")
    with pytest.raises(PluginCallError) as err:
        docker.run(net)
    assert err.value.status == 500
    assert "boom" in err.value.body["Err"]
    assert dispatch(routes, "/Plugin.Activate", b"").status == 200  # still serving

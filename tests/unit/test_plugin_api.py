"""Plugin API types: body parsing, response shapes, PoolIDs, endpoint ids, mapping codec."""

from __future__ import annotations

import pytest

from controller.model.errors import InvalidRecord
from controller.plugin import api, responses
from controller.plugin.ipam_driver import PoolId
from controller.plugin.mapping import (
    DockerEndpoint,
    DockerNetwork,
    decode_endpoint,
    decode_network,
    encode_endpoint,
    encode_network,
)
from controller.plugin.network_driver import endpoint_ids

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize("body", [b"", b"  \n", b"null", b"null\n", b"{}"])
def test_empty_bodies_are_empty_objects(body: bytes) -> None:
    assert api.parse_body(body) == {}


def test_a_body_with_a_trailing_newline_parses() -> None:
    assert api.parse_body(b'{"PoolID": "x"}\n') == {"PoolID": "x"}


def test_requests_ignore_unknown_fields_and_name_missing_ones() -> None:
    req = api.JoinRequest.parse({"NetworkID": HEX, "EndpointID": HEX, "Future": 1})
    assert (req.network_id, req.sandbox_key) == (HEX, "")
    with pytest.raises(api.BadRequest, match="missing field EndpointID"):
        api.EndpointRequest.parse({"NetworkID": HEX})
    with pytest.raises(api.BadRequest, match=r"missing field IPv4Data\[1\].Pool"):
        api.CreateNetworkRequest.parse({"NetworkID": HEX, "IPv4Data": [{"Pool": "a"}, {}]})


def test_gateway_request_is_recognised_by_its_option() -> None:
    gw = api.RequestAddressRequest.parse(
        {"PoolID": "p", "Options": {"RequestAddressType": "com.docker.network.gateway"}}
    )
    plain = api.RequestAddressRequest.parse({"PoolID": "p", "Options": None})
    assert gw.is_gateway and not plain.is_gateway


def test_join_answer_has_a_gateway_or_disables_the_gateway_service() -> None:
    assert responses.JoinResponse("hdp1", "eth", "10.0.0.1").to_json() == {
        "InterfaceName": {"SrcName": "hdp1", "DstPrefix": "eth"},
        "Gateway": "10.0.0.1",
    }
    assert responses.JoinResponse("hdp1", "eth", None).to_json() == {
        "InterfaceName": {"SrcName": "hdp1", "DstPrefix": "eth"},
        "DisableGatewayService": True,
    }


def test_create_endpoint_answer_carries_a_mac_only_when_chosen() -> None:
    assert responses.CreateEndpointResponse("02:00:00:00:00:01").to_json() == {
        "Interface": {"MacAddress": "02:00:00:00:00:01"}
    }
    assert responses.CreateEndpointResponse(None).to_json() == {}


def test_pool_ids_round_trip_and_refuse_foreign_ones() -> None:
    pid = PoolId("blue", "10.20.0.0/24")
    assert str(pid) == "heddle/blue/10.20.0.0/24"
    assert PoolId.parse(str(pid)) == pid
    for bad in ("blue/10.20.0.0/24", "heddle/blue", "heddle//10.0.0.0/24", "heddle/b/10.0.0.1/24"):
        with pytest.raises(api.BadRequest, match="PoolID"):
            PoolId.parse(bad)


def test_endpoint_ids_are_prefixes_shortest_first_and_labels() -> None:
    ids = endpoint_ids(HEX)
    assert ids == (HEX[:12], HEX[:16], HEX[:24], HEX[:32], HEX[:48], HEX[:63])
    assert endpoint_ids(HEX[:12]) == (HEX[:12],)


def test_mapping_records_round_trip_and_validate() -> None:
    n = DockerNetwork(HEX, "blue", "10.0.0.1")
    assert decode_network(HEX, encode_network(n)) == n
    e = DockerEndpoint(HEX, HEX, "blue", HEX[:12])
    assert decode_endpoint(HEX, encode_endpoint(e)) == e
    with pytest.raises(InvalidRecord, match="NetworkID"):
        DockerNetwork("../x", "blue", None)
    with pytest.raises(InvalidRecord, match="docker endpoint mapping"):
        decode_endpoint(HEX, b'{"network": "blue"}')
    with pytest.raises(InvalidRecord, match="invalid JSON"):
        decode_network(HEX, b"{")

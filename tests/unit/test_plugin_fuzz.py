"""Fuzzing the plugin: arbitrary bytes and arbitrary JSON at every route, arbitrary framing at
the chunked-body reader. Only typed answers come out, and a refusal writes nothing."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.model import codec
from controller.model.records import Host, Network
from controller.plugin.ipam_driver import IpamDriver
from controller.plugin.network_driver import NetworkDriver
from controller.plugin.routes import Route, build_routes, dispatch
from controller.plugin.server import BodyTooLarge, MalformedBody, read_chunked
from controller.store import keys
from controller.store.memory import MemoryKV

NID, EID = "a" * 64, "b" * 64
FIELDS = ["NetworkID", "EndpointID", "Options", "Interface", "Pool", "PoolID", "Address",
          "SubPool", "V6", "IPv4Data", "IPv6Data", "AddressSpace", "SandboxKey", "Address",
          "MacAddress", "AddressIPv6", "com.docker.network.generic", "heddle.network",
          "RequestAddressType"]  # fmt: skip
leaves = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from([NID, EID, "blue", "10.20.0.0/24", "heddle/blue/10.20.0.0/24", "10.20.0.7",
                       "10.20.0.7/24", "02:00:0a:14:00:07", "com.docker.network.gateway"])
)  # fmt: skip
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)


def _always_ready(network: str, endpoint_id: str, timeout: float) -> bool:
    return True


def _setup() -> tuple[MemoryKV, dict[str, Route]]:
    kv = MemoryKV()
    kv.put_raw(keys.host("h1"), codec.encode_host(Host("h1", "172.31.253.1")))
    kv.put_raw(keys.network("blue"), codec.encode_network(Network("blue", 9, "10.20.0.0/24")))
    kv.put_raw(keys.vni(9), codec.encode_owner("blue"))
    routes = dict(build_routes(NetworkDriver(kv, "h1", _always_ready, 0.01), IpamDriver(kv, "h1")))
    return kv, routes


KV, ROUTES = _setup()
PATHS = sorted(ROUTES)


def _dump(kv: MemoryKV) -> dict[str, bytes]:
    return {i.key: i.value for i in kv.list("/").items}


def _check(path: str, body: bytes) -> None:
    before = _dump(KV)
    reply = dispatch(ROUTES, path, body)
    message = str(reply.body.get("Err", ""))
    assert "internal error" not in message, (path, body[:200], message)
    assert reply.status in (200, 400, 404, 409, 500, 503), reply
    assert len(message) < 1000, "a refusal quotes a bounded prefix of the request"
    if reply.status != 200:
        assert _dump(KV) == before, f"{path} refused {body[:200]!r} but wrote"


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes(path: str, raw: bytes) -> None:
    _check(path, raw)


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=bodies | values)
def test_arbitrary_json(path: str, obj: Any) -> None:
    _check(path, json.dumps(obj).encode())


@pytest.mark.parametrize("path", PATHS)
def test_deep_and_huge_bodies(path: str) -> None:
    _check(path, b"[" * 100_000 + b"]" * 100_000)
    _check(path, json.dumps({"NetworkID": "x" * 500_000, "EndpointID": EID}).encode())


# -- chunked framing --------------------------------------------------------------------------
def _chunks(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.binary(min_size=1, max_size=50), max_size=6))
def test_well_formed_chunked_bodies_round_trip(parts: list[bytes]) -> None:
    assert read_chunked(io.BytesIO(_chunks(parts)), 1 << 20) == b"".join(parts)


@settings(max_examples=400, deadline=None)
@given(raw=st.binary(max_size=300) | st.builds(lambda a, b: a + b, st.sampled_from(
    [b"-1\r\n", b"0x10\r\n", b"+5\r\n", b"ffffffff\r\n", b"5\r\nabc", b"3\r\nabcXY", b"1;x=y\r\n"]
), st.binary(max_size=40)))  # fmt: skip
def test_any_framing_gives_a_body_or_a_typed_refusal(raw: bytes) -> None:
    stream = io.BytesIO(raw)
    try:
        body = read_chunked(stream, 64)
    except (MalformedBody, BodyTooLarge):
        return
    assert len(body) <= 64


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"-1\r\n" + b"x" * 1000, MalformedBody),
        (b"0x10\r\n", MalformedBody),
        (b"ffffffff\r\n", BodyTooLarge),
        (b"5\r\nabc", MalformedBody),
        (b"3\r\nabcXY0\r\n\r\n", MalformedBody),
        (b"3\r\nabc\r\n", MalformedBody),  # ends before the last chunk
    ],
)
def test_hostile_framings(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        read_chunked(io.BytesIO(raw), 1 << 20)

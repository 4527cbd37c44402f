"""A client that speaks to the plugin the way dockerd does: for tests, benchmarks and diagnosis.

``UnixTransport`` writes raw HTTP/1.1 like Go's plugin client (``POST``, no Content-Type,
``Accept: application/vnd.docker.plugins.v1.2+json``, an empty body for argument-less calls,
``Host`` empty, one keep-alive connection). ``in_process`` calls the routing table directly.
``DockerLike`` replays dockerd's measured call sequences (docs/platform.md D1, D2):
network create/rm, container run/stop, with dockerd's rollback when Join fails.

Not used by the agent itself. ``UnixTransport`` is thread-safe (one request at a time per
transport; make one transport per thread for concurrency, as dockerd opens connections).
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.plugin import api
from controller.plugin.routes import Route, dispatch

Transport = Callable[[str, bytes], tuple[int, dict[str, Any]]]
GATEWAY_OPTIONS = {api.REQUEST_ADDRESS_TYPE: api.GATEWAY_ADDRESS_TYPE}


class PluginCallError(Exception):
    """A non-200 answer: ``status`` and the decoded error object."""

    def __init__(self, path: str, status: int, body: dict[str, Any]) -> None:
        self.path, self.status, self.body = path, status, body
        super().__init__(f"{path}: {status} {body.get('Err') or body.get('Error') or body}")


def in_process(routes: Mapping[str, Route]) -> Transport:
    """A transport that calls ``routes`` directly (no socket)."""

    def call(path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        reply = dispatch(routes, path, body)
        return reply.status, json.loads(json.dumps(reply.body))  # as over the wire

    return call


class UnixTransport:
    """One keep-alive connection to a plugin socket, written like dockerd's Go client."""

    def __init__(self, path: str, timeout: float = 30.0, host_header: str = "") -> None:
        self._path = path
        self._timeout = timeout
        self._host = host_header
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.connects = 0

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        sock.connect(self._path)
        self.connects += 1
        return sock

    def raw(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request`` bytes as they are on the kept-alive connection; return the answer."""
        with self._lock:
            if self._sock is None:
                self._sock = self._connect()
            sock = self._sock
            try:
                sock.sendall(request)
                resp = http.client.HTTPResponse(sock)
                resp.begin()
                data = resp.read()
                if resp.will_close:
                    self.close_locked()
                return resp.status, data
            except BaseException:
                self.close_locked()
                raise

    def __call__(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nUser-Agent: Go-http-client/1.1\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Accept: application/vnd.docker.plugins.v1.2+json\r\nAccept-Encoding: gzip\r\n\r\n"
        )
        status, data = self.raw(head.encode() + body)
        return status, json.loads(data) if data.strip() else {}

    def close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()


@dataclass(frozen=True, slots=True)
class DockerNet:
    name: str
    network_id: str
    pool_id: str
    gateway: str  # CIDR, as Docker holds it


@dataclass(frozen=True, slots=True)
class Container:
    endpoint_id: str
    address: str  # CIDR
    mac: str
    src_name: str
    gateway: str | None

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


def new_id() -> str:
    """A Docker-style 64-hex object ID."""
    return secrets.token_hex(32)


class DockerLike:
    """dockerd's call sequences against one plugin (one "host")."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def call(self, path: str, obj: Any = None, raw: bytes | None = None) -> dict[str, Any]:
        """POST ``obj`` as dockerd would (``None``: empty body); raise on a non-200 answer."""
        body = (
            raw if raw is not None else (b"" if obj is None else json.dumps(obj).encode() + b"\n")
        )
        status, answer = self._transport(path, body)
        if status != 200:
            raise PluginCallError(path, status, answer)
        return answer

    def activate(self) -> None:
        self.call("/Plugin.Activate")
        self.call("/NetworkDriver.GetCapabilities")
        self.call("/IpamDriver.GetCapabilities")
        self.call("/IpamDriver.GetDefaultAddressSpaces")

    def network_create(
        self, name: str, subnet: str | None = None, gateway: str | None = None
    ) -> DockerNet:
        """``docker network create -d heddle --ipam-driver heddle -o heddle.network=<name>
        --ipam-opt heddle.network=<name> [--subnet S] [--gateway G] <name>``, with rollback."""
        opts = {api.NETWORK_OPTION: name}
        pool = self.call(
            "/IpamDriver.RequestPool",
            {
                "AddressSpace": "heddle",
                "Pool": subnet or "",
                "SubPool": "",
                "Options": opts,
                "V6": False,
            },
        )
        pool_id = pool["PoolID"]
        gw = (pool.get("Data") or {}).get(api.GATEWAY_DATA, "")
        if gateway is not None or not gw:
            try:
                gw = self.call(
                    "/IpamDriver.RequestAddress",
                    {"PoolID": pool_id, "Address": gateway or "", "Options": GATEWAY_OPTIONS},
                )["Address"]
            except PluginCallError:
                self.call("/IpamDriver.ReleasePool", {"PoolID": pool_id})
                raise
        network_id = new_id()
        try:
            self.call(
                "/NetworkDriver.CreateNetwork",
                {
                    "NetworkID": network_id,
                    "Options": {"com.docker.network.enable_ipv6": False, api.GENERIC_OPTIONS: opts},
                    "IPv4Data": [{"AddressSpace": "heddle", "Gateway": gw, "Pool": pool["Pool"]}],
                    "IPv6Data": [],
                },
            )
        except PluginCallError:
            self.call(
                "/IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": gw.split("/")[0]}
            )
            self.call("/IpamDriver.ReleasePool", {"PoolID": pool_id})
            raise
        return DockerNet(name, network_id, pool_id, gw)

    def network_rm(self, net: DockerNet) -> None:
        self.call(
            "/IpamDriver.ReleaseAddress",
            {"PoolID": net.pool_id, "Address": net.gateway.split("/")[0]},
        )
        self.call("/IpamDriver.ReleasePool", {"PoolID": net.pool_id})
        self.call("/NetworkDriver.DeleteNetwork", {"NetworkID": net.network_id})

    def run(self, net: DockerNet, ip: str | None = None, mac: str = "") -> Container:
        """``docker run --network <net> [--ip ip]``: the plugin side of it, with dockerd's
        rollback (DeleteEndpoint + ReleaseAddress) when CreateEndpoint or Join fails."""
        address = self.call(
            "/IpamDriver.RequestAddress",
            {"PoolID": net.pool_id, "Address": ip or "", "Options": None},
        )["Address"]
        eid = new_id()
        ports: dict[str, list[Any]] = {
            "com.docker.network.endpoint.exposedports": [],
            "com.docker.network.portmap": [],
        }
        ids = {"NetworkID": net.network_id, "EndpointID": eid}
        try:
            created = self.call(
                "/NetworkDriver.CreateEndpoint",
                {
                    **ids,
                    "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": mac},
                    "Options": ports,
                },
            )
            joined = self.call(
                "/NetworkDriver.Join",
                {**ids, "SandboxKey": f"/var/run/docker/netns/{eid[:12]}", "Options": ports},
            )
        except PluginCallError:
            self.call("/NetworkDriver.DeleteEndpoint", ids)
            self.call(
                "/IpamDriver.ReleaseAddress",
                {"PoolID": net.pool_id, "Address": address.split("/")[0]},
            )
            raise
        self.call("/NetworkDriver.ProgramExternalConnectivity", {**ids, "Options": ports})
        self.call("/NetworkDriver.EndpointOperInfo", ids)
        self.call("/NetworkDriver.EndpointOperInfo", ids)
        got_mac = (created.get("Interface") or {}).get("MacAddress") or mac
        return Container(
            eid, address, got_mac, joined["InterfaceName"]["SrcName"], joined.get("Gateway")
        )

    def stop(self, net: DockerNet, c: Container) -> None:
        """The container exits and is removed."""
        ids = {"NetworkID": net.network_id, "EndpointID": c.endpoint_id}
        self.call("/NetworkDriver.RevokeExternalConnectivity", ids)
        self.call("/NetworkDriver.Leave", ids)
        self.call("/NetworkDriver.DeleteEndpoint", ids)
        self.call("/IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": c.ip})

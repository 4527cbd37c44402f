"""The agent's side of CNI: ADD, DEL, CHECK, GC and STATUS for this host, served on a unix
socket to ``heddle-cni`` (``controller/cni/shim.py``) by the same server as the Docker plugin
(``controller/plugin/server.py``).

* ADD writes the endpoint -- id ``endpoint_id_for(container, ifname)``, this host, the
  runtime's namespace path, the container id -- through ``DesiredState.create_endpoint``, the
  allocation path of the CLI and the Docker plugin (one transaction with its IPAM and placement
  keys). Then it waits (the configuration's ``timeout``) until the agent has built the interface
  in that namespace, up, with its MAC and address, read from the kernel (``interface.py``), and
  answers the result. If the interface does not come in time the record is removed again (no
  half-done ADD stays) and the error is 11 (try again later). A repeated ADD of the same
  container and interface answers like the first.
* DEL removes the record (address and placement key in the same transaction); an endpoint that
  is gone, or is another container's, is success: DEL is idempotent, also when the namespace is
  already gone. The agent then deletes the veth (with the namespace gone, the kernel did).
* CHECK compares the interface with the record: error 102 names every difference.
* GC (1.1) removes this host's CNI endpoints of the network whose container and interface are
  not in ``cni.dev/valid-attachments``.
* STATUS (1.1) is error 50 until the agent's first pass is done.

Thread-safe (the store decides concurrent writes); every failure is a ``CniError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from controller.cni import spec
from controller.cni.interface import InterfaceSeen, differences, read_interface
from controller.cni.spec import CniError, Invocation
from controller.dataplane.netns_socket import is_netns
from controller.desired import DesiredState
from controller.model.errors import (
    Conflict,
    Exhausted,
    HeddleError,
    InvalidRecord,
    NotFound,
    StoreUnavailable,
)
from controller.model.records import Endpoint, Network, check_netns
from controller.plugin.routes import Route
from controller.store.kv import KV

log = logging.getLogger("heddle.cni")

#: How long DEL retries while etcd does not answer (each try is bounded by the client's timeout).
DEL_RETRY = 3.0

ReadInterface = Callable[[str, str], InterfaceSeen | None]


class Waiter(Protocol):
    def until(self, check: Callable[[], bool], timeout: float) -> bool: ...


def endpoint_id_for(container: str, ifname: str) -> str:
    """The endpoint id of a container's interface: stable, so DEL and a repeated ADD find it
    without a lookup. Pure."""
    return "c" + hashlib.sha256(f"{container}/{ifname}".encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class Answer:
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.body


class CniService:
    """See the module docstring. ``ready()``: whether the agent's first pass is done;
    ``read``, ``exists`` and ``netns_check`` read the kernel and the namespace files (tests give
    fakes)."""

    def __init__(
        self,
        kv: KV,
        host: str,
        waiter: Waiter,
        ready: Callable[[], bool],
        read: ReadInterface = read_interface,
        exists: Callable[[str], bool] = os.path.exists,
        netns_check: Callable[[str], bool] = is_netns,
    ) -> None:
        self._desired = DesiredState(kv)
        self._host = host
        self._waiter = waiter
        self._ready = ready
        self._read = read
        self._exists = exists
        self._is_netns = netns_check

    # -- commands -----------------------------------------------------------------------------
    def add(self, inv: Invocation) -> dict[str, Any]:
        netns = _netns(inv.netns)
        if not self._exists(netns):
            raise CniError(spec.UNKNOWN_CONTAINER, f"network namespace {netns} does not exist")
        if not self._is_netns(netns):
            raise CniError(spec.INVALID_ENVIRONMENT, f"CNI_NETNS {netns} is no network namespace")
        if "MAC" in inv.args:
            raise CniError(spec.UNSUPPORTED_FIELD, "heddle derives every MAC from its address: "
                           "CNI_ARGS MAC cannot be honoured")  # fmt: skip
        net = self._desired.get_network(inv.network)
        eid = endpoint_id_for(inv.container, inv.ifname)
        ep = self._existing(inv, eid, netns)
        if ep is None:
            ip, ip6 = _requested(inv.args.get("IP") or "")
            ep = self._desired.create_endpoint(
                inv.network, self._host, netns, ip, inv.ifname, eid, container=inv.container,
                ip6=ip6,
            )  # fmt: skip
            log.info("cni ADD %s/%s: %s %s in %s", ep.network, ep.id, ",".join(ep.addresses),
                     ep.ifname, netns)  # fmt: skip
        timeout = float(inv.config.get("timeout", 30.0))
        if not self._waiter.until(lambda: not self._differences(ep, net), timeout):
            why = "; ".join(self._differences(ep, net))
            with contextlib.suppress(HeddleError):
                self._desired.remove_endpoint(ep.network, ep.id)
            raise CniError(
                spec.TRY_AGAIN_LATER,
                f"the heddle agent on {self._host} did not build {ep.ifname} in {timeout:g} s "
                "(see `heddle status`); the endpoint was removed again",
                why,
            )
        dns = inv.config.get("dns")
        addresses = [(f"{a}/{net.prefixlen_of(a)}", net.gateway6 if ":" in a else net.gateway)
                     for a in ep.addresses]  # fmt: skip
        result = spec.add_result(
            ep.ifname, ep.mac, netns, addresses, dns if isinstance(dns, dict) else None,
            _prev(inv.config),
        )  # fmt: skip
        return spec.result_in(inv.version, result)

    def delete(self, inv: Invocation) -> dict[str, Any]:
        """Remove the container's endpoint. etcd unreachable is retried for a few seconds
        (``DEL_RETRY``) before it is error 11: runtimes do not retry a failed DEL (Podman logs
        it), and an address left taken stays taken until GC."""
        deadline = time.monotonic() + DEL_RETRY
        while True:
            try:
                return self._delete(inv)
            except StoreUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)

    def _delete(self, inv: Invocation) -> dict[str, Any]:
        eid = endpoint_id_for(inv.container, inv.ifname)
        for _ in range(5):
            try:
                ep = self._desired.get_endpoint(inv.network, eid)
            except NotFound:
                return {}
            if ep.container != inv.container or ep.host != self._host:
                return {}  # not this container's (a hash collision) or not this host's
            try:
                self._desired.remove_endpoint(inv.network, eid)
                log.info("cni DEL %s/%s: %s released", ep.network, ep.id, ep.address)
                return {}
            except NotFound:
                return {}
            except Conflict:
                continue  # changed meanwhile: read again
        raise CniError(spec.TRY_AGAIN_LATER, f"endpoint {inv.network}/{eid} keeps changing")

    def check(self, inv: Invocation) -> dict[str, Any]:
        eid = endpoint_id_for(inv.container, inv.ifname)
        try:
            ep = self._desired.get_endpoint(inv.network, eid)
        except NotFound:
            raise CniError(spec.DRIFTED, f"no heddle endpoint for {inv.container[:12]} "
                           f"{inv.ifname} in {inv.network}") from None  # fmt: skip
        if ep.netns != _netns(inv.netns):
            raise CniError(spec.DRIFTED, f"endpoint {ep.id} is in {ep.netns}, not {inv.netns}")
        net = self._desired.get_network(inv.network)
        diff = self._differences(ep, net)
        if diff:
            raise CniError(spec.DRIFTED, f"{ep.ifname} is not as heddle built it", "; ".join(diff))
        return {}

    def gc(self, inv: Invocation) -> dict[str, Any]:
        valid = inv.config.get("cni.dev/valid-attachments", [])
        if not isinstance(valid, list):
            raise CniError(spec.INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
        keep = {(a.get("containerID"), a.get("ifname")) for a in valid if isinstance(a, dict)}
        for ep in self._desired.endpoints(inv.network):
            mine = ep.host == self._host and ep.container is not None
            if mine and (ep.container, ep.ifname) not in keep:
                with contextlib.suppress(NotFound, Conflict):
                    self._desired.remove_endpoint(ep.network, ep.id)
                    log.info("cni GC %s/%s: %s released", ep.network, ep.id, ep.address)
        return {}

    def status(self, inv: Invocation) -> dict[str, Any]:
        if not self._ready():
            raise CniError(spec.NOT_AVAILABLE, f"the heddle agent on {self._host} has not "
                           "finished its first pass")  # fmt: skip
        return {}

    # -- helpers ------------------------------------------------------------------------------
    def accept(self, inv: Invocation) -> None:
        """Refuse (7) a configuration written for another host (``host``: a configuration list
        copied to the wrong machine would otherwise put containers on this one under a name
        that is not theirs)."""
        host = inv.config.get("host")
        if host is not None and host != self._host:
            raise CniError(spec.INVALID_CONFIG, f"this configuration is for host {host!r}; "
                           f"the agent here is {self._host!r}")  # fmt: skip

    def _existing(self, inv: Invocation, eid: str, netns: str) -> Endpoint | None:
        """The record of a repeated ADD (same container, interface and namespace), or None.
        Raises ``CniError`` (101) when the id is taken otherwise."""
        try:
            ep = self._desired.get_endpoint(inv.network, eid)
        except NotFound:
            return None
        if (ep.container, ep.netns, ep.ifname, ep.host) != (
            inv.container, netns, inv.ifname, self._host,
        ):  # fmt: skip
            raise CniError(spec.CONFLICT, f"endpoint {inv.network}/{eid} exists for another "
                           "container or namespace")  # fmt: skip
        return ep

    def _differences(self, ep: Endpoint, net: Network) -> list[str]:
        assert ep.netns is not None
        try:
            seen = self._read(ep.netns, ep.ifname)
        except OSError as exc:
            return [f"reading {ep.ifname} failed: {exc}"]
        return differences(ep, net, seen)


def _netns(path: str) -> str:
    try:
        return check_netns(path, "CNI_NETNS")
    except InvalidRecord as exc:
        raise CniError(spec.INVALID_ENVIRONMENT, str(exc)) from None


def _prev(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    prev = config.get("prevResult")
    return prev if isinstance(prev, dict) else None


def invocation(body: Mapping[str, Any]) -> Invocation:
    """The invocation the executable handed over (``{"env": {CNI_*}, "stdin": text}``: the
    runtime's, as it came), parsed and checked here (``spec.parse_invocation``) -- whoever may
    open the socket may send anything. Raises ``CniError``."""
    env, stdin = body.get("env"), body.get("stdin")
    if not isinstance(env, dict) or not isinstance(stdin, str):
        raise CniError(spec.INVALID_ENVIRONMENT, "a request needs env (an object) and stdin")
    clean = {str(k): str(v) for k, v in env.items() if str(k).startswith("CNI_")}
    return spec.parse_invocation(clean, stdin.encode())


#: A heddle error -> the CNI error code it is (the first class that matches).
_CODES: tuple[tuple[type[HeddleError], int], ...] = (
    (InvalidRecord, spec.INVALID_CONFIG),
    (NotFound, spec.INVALID_CONFIG),
    (Exhausted, spec.EXHAUSTED),
    (Conflict, spec.CONFLICT),
    (StoreUnavailable, spec.TRY_AGAIN_LATER),
)


def _translated(
    service: CniService, call: Callable[[Invocation], dict[str, Any]], command: str
) -> Route:
    """A route that parses the request, checks its command and turns every heddle error into
    the CNI error the specification (or heddle's 100+) has for it, in the caller's version."""

    def serve(body: Mapping[str, Any]) -> Answer:
        inv = invocation(body)
        try:
            if inv.command != command:
                raise CniError(spec.INVALID_ENVIRONMENT, f"{inv.command} sent to {command}")
            service.accept(inv)
            return Answer(call(inv))
        except CniError as exc:
            exc.version = inv.version
            raise
        except HeddleError as exc:
            code = next((c for kind, c in _CODES if isinstance(exc, kind)), None)
            if code is None:
                raise
            why = f"etcd unavailable: {exc}" if isinstance(exc, StoreUnavailable) else str(exc)
            raise CniError(code, why, version=inv.version) from None

    return Route("Cni", serve)


def cni_routes(service: CniService) -> Mapping[str, Route]:
    """The paths ``heddle-cni`` posts to (``shim.PATHS``)."""
    s = service
    return {
        "/Cni.Add": _translated(s, s.add, "ADD"),
        "/Cni.Del": _translated(s, s.delete, "DEL"),
        "/Cni.Check": _translated(s, s.check, "CHECK"),
        "/Cni.Gc": _translated(s, s.gc, "GC"),
        "/Cni.Status": _translated(s, s.status, "STATUS"),
    }


def _requested(arg: str) -> tuple[str | None, str | None]:
    """CNI_ARGS ``IP``: one address or a comma-separated one per family, each with or without
    its prefix length, as (IPv4, IPv6). Raises ``CniError`` for two of one family."""
    ips = [a.split("/")[0] for a in arg.split(",") if a]
    four = [a for a in ips if ":" not in a]
    six = [a for a in ips if ":" in a]
    if len(four) > 1 or len(six) > 1:
        raise CniError(spec.INVALID_CONFIG, f"CNI_ARGS IP={arg}: at most one address per family")
    return (four[0] if four else None), (six[0] if six else None)

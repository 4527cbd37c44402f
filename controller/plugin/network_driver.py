"""The NetworkDriver half of the plugin: Docker networks and endpoints as heddle records.

* CreateNetwork maps this dockerd's NetworkID to the heddle network named by
  ``-o heddle.network=<name>`` (which the IPAM side created or checked) and remembers the gateway
  Docker was given; DeleteNetwork forgets the mapping. The heddle network itself is shared by
  every host and stays (``heddle network rm`` removes it).
* CreateEndpoint writes the endpoint record with its placement key
  (``controller/store/endpoint_ops.py``; this host, ``netns=None``: the agent builds the veth
  pair and leaves the peer ``veth_peer_name(...)`` in the host namespace for Docker to move) and
  the EndpointID mapping in one transaction, guarded by this host's IPAM reservation of the
  address. The heddle endpoint id is the EndpointID's first 12 hex digits (longer on a
  collision). It returns the MAC only when Docker sent none.
* Join waits (bounded by ``join_timeout``) until the agent has created the veth pair, then names
  the peer and the gateway (``DisableGatewayService`` when the network has none; never neither,
  or dockerd plugs the container into ``docker_gwbridge``).
* DeleteEndpoint removes the record, its placement key and the mapping; the agent then deletes
  the veth, which Docker has moved back to the host namespace by then.

Every handler is idempotent (a repeated call answers like the first) and thread-safe, and holds
no state but the ``KV`` and a memo of the endpoints it created (``controller/plugin/made.py``:
it saves reads, never decides anything): concurrent calls are decided by etcd compares.
Raises ``InvalidRecord``, ``Conflict``, ``NotFound``, ``NotReady`` and ``StoreUnavailable``
(``routes.dispatch`` turns them into ``{"Err": ...}`` answers).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Protocol

from controller.model import codec
from controller.model.errors import Conflict, HeddleError, InvalidRecord, NotFound, brief
from controller.model.naming import derive_mac, veth_host_name, veth_peer_name
from controller.model.records import Endpoint, Network, check_label
from controller.plugin import api, lookup, responses
from controller.plugin import keys as pkeys
from controller.plugin.ipam_driver import ADDRESS_SPACES
from controller.plugin.made import Made, MadeMemo
from controller.plugin.mapping import (
    DockerEndpoint,
    DockerNetwork,
    decode_endpoint,
    encode_endpoint,
    encode_network,
)
from controller.store import endpoint_ops, keys
from controller.store.kv import KV, Compare, Delete, Put, Txn

log = logging.getLogger("heddle.plugin.network")

SCOPE = "local"  # each dockerd stores its own network (works without swarm on 20.10 and 26.1)
CONNECTIVITY_SCOPE = "global"  # ... but the network spans hosts
DST_PREFIX = "eth"
DEFAULT_JOIN_TIMEOUT = 5.0
_ID_LENGTHS = (12, 16, 24, 32, 48, 63)  # heddle endpoint ids tried, shortest first (label <= 63)


class ReadyWaiter(Protocol):
    """Block until the agent on this host has built endpoint ``network``/``endpoint_id``'s veth
    pair with the peer still in the host namespace; False after ``timeout`` seconds."""

    def __call__(self, network: str, endpoint_id: str, timeout: float) -> bool: ...


class NotReady(HeddleError):
    """The agent did not build the endpoint's veth in time (Join fails; dockerd rolls back)."""


def endpoint_ids(docker_endpoint_id: str) -> tuple[str, ...]:
    """heddle endpoint ids for a Docker EndpointID, in the order they are tried. Pure."""
    out: list[str] = []
    for n in _ID_LENGTHS:
        candidate = docker_endpoint_id[:n]
        if candidate not in out:
            out.append(candidate)
    return tuple(out)


class NetworkDriver:
    """The NetworkDriver handlers of one host's plugin; see the module docstring.

    ``wait_ready`` is the seam to the local reconciler (``readiness.LinkReadiness`` in the agent,
    a fake in unit tests)."""

    def __init__(
        self,
        kv: KV,
        host: str,
        wait_ready: ReadyWaiter,
        join_timeout: float = DEFAULT_JOIN_TIMEOUT,
    ) -> None:
        check_label(host, "host")
        self._kv = kv
        self._host = host
        self._wait_ready = wait_ready
        self._join_timeout = join_timeout
        self._owner = pkeys.reservation_owner(host)
        self._made = MadeMemo()

    # -- capabilities, discovery, external connectivity (nothing to do) ----------------------
    def capabilities(self, _: api.Empty) -> responses.NetworkCapabilities:
        return responses.NetworkCapabilities(SCOPE, CONNECTIVITY_SCOPE)

    def gw_alloc_check(self, _: api.GwAllocCheckRequest) -> responses.GwAllocCheckResponse:
        """Docker 28+: reserve the gateways. Every heddle network has an IPv4 gateway (and a
        dual-stack one an IPv6 gateway) that Join names as the containers' default routes, and
        heddle's IPAM driver (the only one it accepts) is what reserves them: nothing is
        skipped."""
        return responses.GwAllocCheckResponse(skip_ipv4=False, skip_ipv6=False)

    def discover(self, _: api.DiscoveryRequest) -> responses.Ok:
        """DiscoverNew/DiscoverDelete: heddle learns about hosts from etcd, not from Docker."""
        return responses.Ok()

    def external_connectivity(self, _: api.EndpointRequest) -> responses.Ok:
        """Program/RevokeExternalConnectivity: no port mappings on an overlay."""
        return responses.Ok()

    def leave(self, _: api.EndpointRequest) -> responses.Ok:
        """Nothing to undo: the peer is still in the container; DeleteEndpoint cleans up."""
        return responses.Ok()

    # -- networks ----------------------------------------------------------------------------
    def create_network(self, req: api.CreateNetworkRequest) -> responses.Ok:
        """Map ``req.network_id`` to the heddle network. Idempotent; writes nothing on refusal."""
        name = req.heddle_network()
        if name is None:
            raise api.BadRequest(
                f"missing option {api.NETWORK_OPTION}: use `docker network create -d heddle "
                f"--ipam-driver heddle -o {api.NETWORK_OPTION}=NAME --ipam-opt "
                f"{api.NETWORK_OPTION}=NAME ...`"
            )
        check_label(name, f"-o {api.NETWORK_OPTION}")
        if len(req.ipv4) != 1:
            raise InvalidRecord(
                f"a heddle network has exactly one IPv4 subnet, got {len(req.ipv4)}"
            )
        data = req.ipv4[0]
        if data.address_space not in ADDRESS_SPACES:
            raise InvalidRecord(
                f"addresses come from IPAM address space {brief(data.address_space)}, "
                "not heddle's: add "
                f"`--ipam-driver heddle --ipam-opt {api.NETWORK_OPTION}={name}`"
            )
        stored = lookup.network(self._kv, name)
        if stored is None:
            raise NotFound(
                f"heddle network {name} does not exist: use the same name in -o "
                f"{api.NETWORK_OPTION} and --ipam-opt {api.NETWORK_OPTION}"
            )
        if stored.network.subnet != data.pool:
            raise Conflict(
                f"heddle network {name} has subnet {stored.network.subnet}, but Docker's pool is "
                f"{data.pool}: use the same name in -o {api.NETWORK_OPTION} and --ipam-opt "
                f"{api.NETWORK_OPTION}"
            )
        gateway = _gateway(data, "IPv4Data", ipaddress.IPv4Interface)
        gateway6 = None
        subnet6 = stored.network.subnet6
        if (subnet6 is None) != (not req.ipv6) or len(req.ipv6) > 1:
            raise InvalidRecord(
                f"heddle network {name} has subnets {stored.network.subnets}: create the Docker "
                "network " + ("with --ipv6 and its IPv6 --subnet" if subnet6 else "without --ipv6")
            )
        if req.ipv6:
            if req.ipv6[0].pool != subnet6:
                raise Conflict(
                    f"heddle network {name} has IPv6 subnet {subnet6}, but Docker's pool is "
                    f"{req.ipv6[0].pool}"
                )
            gateway6 = _gateway(req.ipv6[0], "IPv6Data", ipaddress.IPv6Interface)
        mapping = DockerNetwork(req.network_id, name, gateway, gateway6)
        key = pkeys.network(self._host, req.network_id)
        txn = Txn(
            compares=(Compare(key, "create", "=", 0),), success=(Put(key, encode_network(mapping)),)
        )
        if not self._kv.commit(txn).succeeded:
            existing = lookup.docker_network(self._kv, self._host, req.network_id)
            if existing is None or existing.network != name:
                raise Conflict(
                    f"Docker network {req.network_id[:12]} is already mapped to "
                    f"{existing.network if existing else 'another network'}"
                )
        return responses.Ok()

    def delete_network(self, req: api.NetworkRequest) -> responses.Ok:
        """Forget the mapping. Idempotent (an unknown NetworkID is fine)."""
        self._kv.commit(Txn(success=(Delete(pkeys.network(self._host, req.network_id)),)))
        return responses.Ok()

    # -- endpoints ---------------------------------------------------------------------------
    def create_endpoint(self, req: api.CreateEndpointRequest) -> responses.CreateEndpointResponse:
        """Write the endpoint record and the EndpointID mapping in one transaction."""
        # A repeated call fails the transaction's "mapping absent" guard and is answered below.
        net_map = self._docker_network(req.network_id)
        stored = lookup.network(self._kv, net_map.network)
        if stored is None:
            raise NotFound(f"heddle network {net_map.network} does not exist any more")
        net = stored.network
        if not req.address:
            raise api.BadRequest(
                "missing field Interface.Address: the Docker network must use --ipam-driver heddle"
            )
        try:
            iface = ipaddress.IPv4Interface(req.address)
        except ValueError:
            raise api.BadRequest(
                f"field Interface.Address {brief(req.address)} is not an IPv4 address/prefix"
            ) from None
        ip = str(iface.ip)
        if iface.network != net.network:
            raise InvalidRecord(f"address {req.address} is not in {net.name}'s subnet {net.subnet}")
        ip6 = _address6(req.address_ipv6, net)
        mac = req.mac.lower() if req.mac else derive_mac(net.vni, ip)
        ipam_keys = [keys.ipam(net.name, a) for a in (ip, ip6) if a is not None]
        reserved = codec.encode_owner(self._owner).encode()
        for eid in endpoint_ids(req.endpoint_id):
            ep = Endpoint(eid, net.name, self._host, ip, mac, None, ip6=ip6)
            mapping = DockerEndpoint(req.endpoint_id, req.network_id, net.name, eid)
            map_key = pkeys.endpoint(self._host, req.endpoint_id)
            ep_key = keys.endpoint(net.name, eid)
            txn = Txn(
                compares=(
                    Compare(keys.network(net.name), "mod", "=", stored.kv.mod_revision),
                    *(Compare(k, "value", "=", reserved) for k in ipam_keys),
                    Compare(ep_key, "create", "=", 0),
                    Compare(map_key, "create", "=", 0),
                ),
                success=(*endpoint_ops.put_endpoint(ep), Put(map_key, encode_endpoint(mapping))),
            )
            result = self._kv.commit(txn)
            if result.succeeded:
                self._made.put(req.endpoint_id, Made(mapping, ip, mac, result.revision))
                return responses.CreateEndpointResponse(None if req.mac else mac)
            # Diagnose which compare failed; only an id collision tries the next id.
            done = self._existing_endpoint(req)
            if done is not None:
                return done  # a concurrent duplicate call won
            current = self._kv.get(keys.network(net.name))
            if current is None or current.mod_revision != stored.kv.mod_revision:
                raise Conflict(f"heddle network {net.name} was removed or replaced meanwhile")
            for ipam_key in ipam_keys:
                held = self._kv.get(ipam_key)
                if held is None or held.value != reserved:
                    who = codec.decode_owner(held.value) if held else "nobody"
                    raise Conflict(
                        f"address {ipam_key.rsplit('/', 1)[1]} of {net.name} is not reserved by "
                        f"this host's dockerd (held by {brief(who)}): use the same name in -o "
                        f"{api.NETWORK_OPTION} and --ipam-opt {api.NETWORK_OPTION}"
                    )
        raise Conflict(f"no free heddle endpoint id for Docker endpoint {req.endpoint_id}")

    def _existing_endpoint(
        self, req: api.CreateEndpointRequest
    ) -> responses.CreateEndpointResponse | None:
        """The answer to a repeated CreateEndpoint, or None if the endpoint is new."""
        found = lookup.docker_endpoint(self._kv, self._host, req.endpoint_id)
        if found is None:
            return None
        mapping = found[0]
        ep = lookup.endpoint(self._kv, mapping.network, mapping.id)
        if mapping.network_id != req.network_id or ep is None:
            raise Conflict(
                f"Docker endpoint {req.endpoint_id[:12]} already exists for another network, or "
                "its heddle endpoint was removed: remove the container and retry"
            )
        return responses.CreateEndpointResponse(None if req.mac else ep[0].mac)

    def delete_endpoint(self, req: api.EndpointRequest) -> responses.Ok:
        """Remove the endpoint record and the mapping in one transaction (the address stays
        reserved until ReleaseAddress). Idempotent."""
        map_key = pkeys.endpoint(self._host, req.endpoint_id)
        made = self._made.pop(req.endpoint_id)
        if made is not None:  # nothing changed since CreateEndpoint: one guarded transaction
            network, eid = made.mapping.network, made.mapping.id
            guarded = Txn(
                compares=(
                    Compare(map_key, "mod", "=", made.revision),
                    Compare(keys.endpoint(network, eid), "mod", "=", made.revision),
                ),
                success=(Delete(map_key), *endpoint_ops.delete_endpoint(network, eid, self._host)),
            )
            if self._kv.commit(guarded).succeeded:
                return responses.Ok()
        for _ in range(8):
            found = self._kv.get(map_key)
            if found is None:
                return responses.Ok()
            compares = [Compare(map_key, "mod", "=", found.mod_revision)]
            ops: list[Put | Delete] = [Delete(map_key)]
            try:
                mapping = decode_endpoint(req.endpoint_id, found.value)
            except InvalidRecord as exc:
                log.warning("DeleteEndpoint: dropping an undecodable mapping: %s", exc)
            else:
                ep = lookup.endpoint(self._kv, mapping.network, mapping.id)
                if ep is not None and ep[0].host == self._host:
                    ep_key = keys.endpoint(mapping.network, mapping.id)
                    compares.append(Compare(ep_key, "mod", "=", ep[1].mod_revision))
                    ops.extend(
                        endpoint_ops.delete_endpoint(mapping.network, mapping.id, self._host)
                    )
            if self._kv.commit(Txn(tuple(compares), tuple(ops))).succeeded:
                return responses.Ok()
        raise Conflict(f"Docker endpoint {req.endpoint_id[:12]} keeps changing; try again")

    def join(self, req: api.JoinRequest) -> responses.JoinResponse:
        """Wait for the veth (bounded), then name the peer and the gateway. Idempotent."""
        made = self._made.get(req.endpoint_id)
        mapping = made.mapping if made is not None else self._mapping(req.endpoint_id)
        if lookup.endpoint(self._kv, mapping.network, mapping.id) is None:
            raise NotFound(f"heddle endpoint {mapping.network}/{mapping.id} was removed meanwhile")
        net_map = lookup.docker_network(self._kv, self._host, req.network_id)
        if net_map is not None:
            gateway, gateway6 = net_map.gateway, net_map.gateway6
        else:  # mapping lost (hand-edited etcd): fall back to the network record
            stored = lookup.network(self._kv, mapping.network)
            gateway = stored.network.gateway if stored else None
            gateway6 = stored.network.gateway6 if stored else None
        if not self._wait_ready(mapping.network, mapping.id, self._join_timeout):
            raise NotReady(
                f"the heddle agent on {self._host} did not create the interface of endpoint "
                f"{mapping.network}/{mapping.id} within {self._join_timeout:g} s "
                "(see `heddle host ls` for its status)"
            )
        return responses.JoinResponse(
            veth_peer_name(mapping.network, mapping.id), DST_PREFIX, gateway, gateway6
        )

    def endpoint_oper_info(self, req: api.EndpointRequest) -> responses.OperInfoResponse:
        """What heddle made of the endpoint (shown by ``docker inspect``). Never fails for an
        unknown endpoint: dockerd treats an error here as fatal for the container."""
        made = self._made.get(req.endpoint_id)
        if made is not None:
            return responses.OperInfoResponse(_oper_info(made.mapping, made.ip, made.mac))
        found = lookup.docker_endpoint(self._kv, self._host, req.endpoint_id)
        if found is None:
            return responses.OperInfoResponse({})
        mapping = found[0]
        ep = lookup.endpoint(self._kv, mapping.network, mapping.id)
        if ep is None:
            return responses.OperInfoResponse(_oper_info(mapping))
        return responses.OperInfoResponse(_oper_info(mapping, ep[0].ip, ep[0].mac))

    # -- helpers -----------------------------------------------------------------------------
    def _docker_network(self, network_id: str) -> DockerNetwork:
        found = lookup.docker_network(self._kv, self._host, network_id)
        if found is None:
            raise NotFound(
                f"Docker network {network_id[:12]} is not known to heddle on host {self._host} "
                "(its CreateNetwork never reached this host's plugin)"
            )
        return found

    def _mapping(self, endpoint_id: str) -> DockerEndpoint:
        found = lookup.docker_endpoint(self._kv, self._host, endpoint_id)
        if found is None:
            raise NotFound(
                f"Docker endpoint {endpoint_id[:12]} is not known to heddle on host {self._host}"
            )
        return found[0]


def _gateway(
    data: api.IPAMData,
    field: str,
    parse: type[ipaddress.IPv4Interface] | type[ipaddress.IPv6Interface],
) -> str | None:
    """The gateway address of one ``IPv4Data``/``IPv6Data`` entry (None: none given)."""
    if not data.gateway:
        return None
    try:
        return str(parse(data.gateway).ip)
    except ValueError:
        raise api.BadRequest(
            f"field {field}[0].Gateway {brief(data.gateway)} is not an address of that family"
        ) from None


def _address6(text: str, net: Network) -> str | None:
    """``Interface.AddressIPv6`` as the endpoint's ``ip6`` (None when Docker gave none);
    refused when it does not fit the network's IPv6 subnet, or is missing in a dual-stack
    network (its endpoint would lack an address of one of the network's families)."""
    if not text:
        if net.subnet6 is not None:
            raise InvalidRecord(
                f"heddle network {net.name} is dual-stack: the Docker network needs --ipv6"
            )
        return None
    try:
        iface = ipaddress.IPv6Interface(text)
    except ValueError:
        raise api.BadRequest(
            f"field Interface.AddressIPv6 {brief(text)} is not an IPv6 address/prefix"
        ) from None
    if net.network6 is None or iface.network != net.network6:
        raise InvalidRecord(f"address {text} is not in {net.name}'s IPv6 subnet {net.subnet6}")
    return str(iface.ip)


def _oper_info(
    mapping: DockerEndpoint, ip: str | None = None, mac: str | None = None
) -> dict[str, Any]:
    """EndpointOperInfo's value: the heddle endpoint, its host-side interface, its address."""
    value: dict[str, Any] = {
        "heddle.network": mapping.network,
        "heddle.endpoint": mapping.id,
        "host_if": veth_host_name(mapping.network, mapping.id),
    }
    if ip is not None:
        value.update(ip=ip, mac=mac)
    return value

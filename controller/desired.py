"""Writes and reads of desired networks and endpoints, each write one etcd transaction.

Contracts:
- Every write either happens whole or not at all (one ``Txn``); on a refusal nothing is written.
- Uniqueness (network name, VNI, endpoint address) is decided by etcd compares
  (``create_revision == 0``), so concurrent writers on any number of machines never produce a
  duplicate; losers retry with the next candidate or get a clear ``Conflict``.
- Endpoint writes are guarded by the network's ``mod_revision``: an endpoint can never be
  written for a network that is being removed or was replaced.
Raises ``InvalidRecord``, ``Conflict``, ``NotFound``, ``Exhausted`` or ``StoreUnavailable``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from controller import allocation, ipam
from controller.model import codec
from controller.model.errors import Conflict, Exhausted, InvalidRecord, NotFound, brief
from controller.model.naming import derive_mac
from controller.model.records import Endpoint, Network, check_label, parse_subnet
from controller.store import endpoint_ops, keys
from controller.store.host_endpoints import read_with_host_endpoints
from controller.store.kv import KV, Compare, Delete, DeletePrefix, KeyValue, Put, Read, Txn


@dataclass(frozen=True, slots=True)
class _Stored:
    network: Network
    kv: KeyValue


class DesiredState:
    """The operator-facing API over the store. Thread-safe. Holds the ``KV`` and, for many
    allocations through one instance, what it knows of each pool (``allocation.Pools``: a
    hint, never the authority)."""

    def __init__(self, kv: KV) -> None:
        self._kv = kv
        self._pools = allocation.Pools()

    # -- networks ----------------------------------------------------------------------------
    def create_network(
        self,
        name: str,
        subnet: str | None,
        vni: int | None = None,
        gateway: str | None = None,
        mtu: int | None = None,
        egress: str | None = None,
        subnet6: str | None = None,
        gateway6: str | None = None,
    ) -> Network:
        """Create a network (``subnet`` IPv4, ``subnet6`` IPv6, or both) and its VNI guard in
        one transaction; picks the lowest free VNI when ``vni`` is None. Refuses
        (``Conflict``) a taken name or VNI. With ``egress`` and no ``gateway`` the gateway is
        the IPv4 subnet's first address."""
        if egress is not None and gateway is None and subnet is not None:
            gateway = str(next(parse_subnet(subnet).hosts()))

        def record(vni: int) -> Network:
            return Network(name, vni, subnet, gateway, mtu, egress, subnet6, gateway6)

        # Validate everything (with a placeholder VNI) before touching the store.
        record(vni if vni is not None else 1)
        if vni is not None:
            net = record(vni)
            if self._try_create_network(net):
                return net
            raise self._network_conflict(net)
        taken: set[int] = set()
        while True:
            listing = self._kv.list(keys.VNIS)
            taken |= {int(k) for kv in listing.items if (k := kv.key[len(keys.VNIS) :]).isdigit()}
            for candidate in ipam.free_vnis(taken):
                net = record(candidate)
                if self._try_create_network(net):
                    return net
                if self._kv.get(keys.network(name)) is not None:
                    raise Conflict(f"network {brief(name)} already exists")
                taken.add(candidate)
                break  # lost a race for this VNI: re-list, someone is allocating too
            else:
                raise Exhausted("no free VNI left")

    def _try_create_network(self, net: Network) -> bool:
        txn = Txn(
            compares=(
                Compare(keys.network(net.name), "create", "=", 0),
                Compare(keys.vni(net.vni), "create", "=", 0),
            ),
            success=(
                Put(keys.network(net.name), codec.encode_network(net).encode()),
                Put(keys.vni(net.vni), codec.encode_owner(net.name).encode()),
            ),
        )
        return self._kv.commit(txn).succeeded

    def _network_conflict(self, net: Network) -> Conflict:
        if self._kv.get(keys.network(net.name)) is not None:
            return Conflict(f"network {brief(net.name)} already exists")
        owner = self._kv.get(keys.vni(net.vni))
        who = codec.decode_owner(owner.value) if owner else "another network"
        return Conflict(f"VNI {net.vni} is already used by network {brief(who)}")

    def get_network(self, name: str) -> Network:
        return self._stored_network(name).network

    def _stored_network(self, name: str) -> _Stored:
        check_label(name, "network name")
        return _stored(name, self._kv.get(keys.network(name)))

    def networks(self) -> list[Network]:
        """All valid networks, sorted by name (invalid records are left out)."""
        out = []
        for kv in self._kv.list(keys.NETWORKS).items:
            try:
                out.append(codec.decode_network(kv.value))
            except InvalidRecord:
                continue
        return out

    def remove_network(self, name: str, force: bool = False) -> int:
        """Remove a network, its VNI guard, and (with ``force``) its endpoints and addresses.

        Without ``force`` it refuses while endpoints exist. The delete always clears the
        network's endpoint and IPAM prefixes in the same transaction, so an endpoint created
        concurrently with the removal can never be orphaned. Returns the endpoints removed.
        """
        stored = self._stored_network(name)
        eps = self._kv.list(keys.endpoints_of(name)).items
        if eps and not force:
            raise Conflict(
                f"network {brief(name)} still has {len(eps)} endpoint(s); remove them first "
                "or use --force"
            )
        vni_key = keys.vni(stored.network.vni)
        ops: list[Put | Delete | DeletePrefix] = [
            Delete(keys.network(name)),
            DeletePrefix(keys.endpoints_of(name)),
            DeletePrefix(keys.ipam_of(name)),
            *(
                Delete(k)
                for k in sorted(
                    {  # a set: etcd refuses a key twice in one txn
                        keys.placement(ep.host, ep.network, ep.id)
                        for ep in _decode_endpoints(eps)
                        if ep.network == name
                    }
                )
            ),
        ]
        owner = self._kv.get(vni_key)
        if owner is not None and codec.decode_owner(owner.value) == name:
            ops.append(Delete(vni_key))
        txn = Txn(
            compares=(Compare(keys.network(name), "mod", "=", stored.kv.mod_revision),),
            success=tuple(ops),
        )
        if not self._kv.commit(txn).succeeded:
            raise Conflict(f"network {brief(name)} changed while removing it; try again")
        return len(eps)

    # -- endpoints ---------------------------------------------------------------------------
    def create_endpoint(
        self,
        network: str,
        host: str,
        netns: str | None = None,
        ip: str | None = None,
        ifname: str = "eth0",
        endpoint_id: str | None = None,
        require_host: bool = True,
        container: str | None = None,
        ip6: str | None = None,
    ) -> Endpoint:
        """Allocate an address of each family of the network (the lowest free ones, or ``ip``
        and ``ip6``: all of its families or none) and write the endpoint and its IPAM keys in
        one transaction. ``Exhausted`` when a pool is full; ``Conflict`` when an address or
        ``endpoint_id`` is taken, or (``netns`` given) when the host already has an endpoint
        on that interface: a courtesy check, through the host's placement keys, read in the
        round trip that reads the network. ``container``: a CNI runtime's container id (its
        namespace is the runtime's own, so that check is skipped)."""
        check_label(host, "host")
        eid = endpoint_id if endpoint_id is not None else secrets.token_hex(6)
        on_host: tuple[KeyValue, ...] = ()
        checked = netns is not None and container is None
        if checked:
            check_label(network, "network name")
            (got,), on_host = read_with_host_endpoints(
                self._kv, [Read(keys.network(network))], host, (netns, ifname)
            )
            stored = _stored(network, got.items[0] if got.items else None)
        else:
            stored = self._stored_network(network)
        net = stored.network
        # Validate the record shape (with placeholder addresses) before any allocation.
        placeholder = tuple(next(ipam.usable_addresses(net, six)) for six in ipam.families(net))
        _endpoint(net, eid, host, placeholder, netns, ifname, container)
        if checked:
            _check_interface_free(on_host, host, netns, ifname)
        # Host registration and id uniqueness are compares in the allocation txn itself (one
        # round trip less each); a failed txn is diagnosed afterwards.
        requested = tuple(a for a in (ip, ip6) if a is not None)
        if requested:
            for addr in requested:
                why = ipam.check_requested(net, addr)
                if why:
                    raise InvalidRecord(why)
            if len(requested) != len(placeholder):
                raise InvalidRecord(
                    f"network {net.name} has subnets {net.subnets}: request an address of each "
                    "family (--ip and --ip6) or none"
                )
            ep = _endpoint(net, eid, host, requested, netns, ifname, container)
            if self._try_create_endpoint(stored, ep, require_host):
                return ep
            raise self._endpoint_conflict(stored, ep, require_host)
        return self._allocate(stored, eid, host, netns, ifname, require_host, container)

    def _allocate(
        self,
        stored: _Stored,
        eid: str,
        host: str,
        netns: str | None,
        ifname: str,
        require_host: bool,
        container: str | None,
    ) -> Endpoint:
        net = stored.network

        def endpoint(ips: allocation.Addresses) -> Endpoint:
            return _endpoint(net, eid, host, ips, netns, ifname, container)

        ips = allocation.allocate(
            self._kv,
            net,
            stored.kv.mod_revision,
            self._claim(net.name, eid, host, endpoint, require_host),
            lambda ips: self._raise_unless_address_race(stored, endpoint(ips), require_host),
            self._pools,
        )
        return endpoint(ips)

    @staticmethod
    def _claim(
        network: str,
        eid: str,
        host: str,
        endpoint: Callable[[allocation.Addresses], Endpoint],
        require_host: bool,
    ) -> allocation.Claim:
        """An endpoint's claim: its record goes into the address's transaction, which also
        compares that the id is new and (``require_host``) that its host is registered."""
        compares = [Compare(keys.endpoint(network, eid), "create", "=", 0)]
        if require_host:
            compares.append(Compare(keys.host(host), "create", ">", 0))
        return allocation.Claim(
            owner=eid,
            compares=lambda ips: tuple(compares),
            puts=lambda ips: endpoint_ops.put_endpoint(endpoint(ips)),
        )

    def _try_create_endpoint(self, stored: _Stored, ep: Endpoint, require_host: bool) -> bool:
        claim = self._claim(ep.network, ep.id, ep.host, lambda ips: ep, require_host)
        return allocation.try_claim(
            self._kv, stored.network, stored.kv.mod_revision, ep.addresses, claim
        )

    def _raise_unless_address_race(self, stored: _Stored, ep: Endpoint, require_host: bool) -> None:
        """After a failed endpoint txn: return if only the address was taken, else raise."""
        current = self._kv.get(keys.network(ep.network))
        if current is None or current.mod_revision != stored.kv.mod_revision:
            raise Conflict(f"network {brief(ep.network)} was removed or replaced meanwhile")
        if self._kv.get(keys.endpoint(ep.network, ep.id)) is not None:
            raise Conflict(f"endpoint {ep.network}/{ep.id} already exists")
        if require_host and self._kv.get(keys.host(ep.host)) is None:
            raise NotFound(
                f"host {brief(ep.host)} is not registered "
                f"(start `heddle agent --host {ep.host}` there first)"
            )

    def _endpoint_conflict(self, stored: _Stored, ep: Endpoint, require_host: bool) -> Conflict:
        self._raise_unless_address_race(stored, ep, require_host)
        for ip in ep.addresses:
            owner = self._kv.get(keys.ipam(ep.network, ip))
            if owner is not None:
                who = codec.decode_owner(owner.value)
                return Conflict(
                    f"address {ip} in network {ep.network} is already in use by {brief(who)}"
                )
        return Conflict(f"address {ep.address} in network {ep.network} was taken meanwhile")

    def get_endpoint(self, network: str, endpoint_id: str) -> Endpoint:
        check_label(network, "network")
        check_label(endpoint_id, "endpoint id")
        kv = self._kv.get(keys.endpoint(network, endpoint_id))
        if kv is None:
            raise NotFound(f"endpoint {network}/{endpoint_id} does not exist")
        return codec.decode_endpoint(kv.value)

    def endpoints(self, network: str | None = None) -> list[Endpoint]:
        """Valid endpoints (of one network, or all), sorted by network then id."""
        prefix = keys.ENDPOINTS if network is None else keys.endpoints_of(network)
        if network is not None:
            check_label(network, "network")
        return list(_decode_endpoints(self._kv.list(prefix).items))

    def remove_endpoint(self, network: str, endpoint_id: str) -> Endpoint:
        """Delete an endpoint and release its address in one transaction."""
        check_label(network, "network")
        check_label(endpoint_id, "endpoint id")
        key = keys.endpoint(network, endpoint_id)
        kv = self._kv.get(key)
        if kv is None:
            raise NotFound(f"endpoint {network}/{endpoint_id} does not exist")
        ep = codec.decode_endpoint(kv.value)
        compares = [Compare(key, "mod", "=", kv.mod_revision)]
        ops: list[Put | Delete | DeletePrefix] = [
            *endpoint_ops.delete_endpoint(network, endpoint_id, ep.host)
        ]
        released = []
        for ip in ep.addresses:
            ipam_key = keys.ipam(network, ip)
            owner = self._kv.get(ipam_key)
            if owner is not None and codec.decode_owner(owner.value) == endpoint_id:
                compares.append(Compare(ipam_key, "mod", "=", owner.mod_revision))
                ops.append(Delete(ipam_key))
                released.append(ip)
        if not self._kv.commit(Txn(tuple(compares), tuple(ops))).succeeded:
            raise Conflict(f"endpoint {network}/{endpoint_id} changed while removing it")
        for ip in released:
            self._pools.release(network, ip)
        return ep


def _stored(name: str, kv: KeyValue | None) -> _Stored:
    if kv is None:
        raise NotFound(f"network {brief(name)} does not exist")
    return _Stored(codec.decode_network(kv.value), kv)


def _check_interface_free(
    records: Iterable[KeyValue], host: str, netns: str | None, ifname: str
) -> None:
    """Refuse a second endpoint with this host's ``netns``/``ifname`` (in any network), among
    ``records`` (``read_with_host_endpoints``: this host's, or every endpoint).

    A courtesy check, not a guard: two writers racing past it both succeed, and then the
    agents keep the older record (``controller/model/conflicts.py``) and report the other.
    Raises ``Conflict``."""
    for item in records:
        if codec.endpoint_interface(item.value) != (host, netns, ifname):
            continue
        try:
            other = codec.decode_endpoint(item.value)
        except InvalidRecord:
            continue
        if (other.host, other.netns, other.ifname) == (host, netns, ifname):
            raise Conflict(
                f"interface {ifname} in namespace {netns} on {host} is already endpoint "
                f"{other.network}/{other.id}"
            )


def _endpoint(
    net: Network,
    eid: str,
    host: str,
    ips: allocation.Addresses,
    netns: str | None,
    ifname: str,
    container: str | None,
) -> Endpoint:
    """The endpoint record with addresses ``ips`` (one per family of ``net``, IPv4 first); its
    MAC derives from the first. Raises ``InvalidRecord``."""
    ip = next((a for a in ips if ":" not in a), None)
    ip6 = next((a for a in ips if ":" in a), None)
    mac = derive_mac(net.vni, ips[0])
    return Endpoint(eid, net.name, host, ip, mac, netns, ifname, container, ip6)


def _decode_endpoints(items: Iterable[KeyValue]) -> Iterable[Endpoint]:
    for kv in items:
        try:
            yield codec.decode_endpoint(kv.value)
        except InvalidRecord:
            continue

"""The IpamDriver half of the plugin: pools are heddle networks, addresses the shared etcd IPAM.

Semantics (README.md "Docker"; docs/platform.md D1, D5):

* A pool is a heddle network, named by ``--ipam-opt heddle.network=<name>``. ``RequestPool``
  checks it against etcd but writes nothing: with ``--subnet`` the network may not exist yet (it
  is created by the gateway request, when the gateway is known) and must have that subnet if it
  does; without ``--subnet`` it must exist. The PoolID carries the name and the subnet
  (``heddle/<network>/<subnet>``), so every later call is stateless.
* The gateway belongs to the *network*, not to one host: a network that has one reports it in
  RequestPool's ``Data`` (so libnetwork does not ask for it); the first host's gateway request
  creates the network with the gateway in its record (``--gateway`` or the first address, as
  Docker itself would pick); for a network created without a gateway (``heddle network create``
  without ``--gateway``) one address is reserved with owner ``GATEWAY_OWNER``. Releasing the
  gateway is a no-op: other hosts still route through it. ``heddle network rm`` frees it.
* Container addresses are reserved with owner ``docker@<host>`` under the same IPAM keys as the
  CLI's (``create_revision == 0`` compare), so no two hosts, and no CLI endpoint, ever get the
  same address. ``ReleaseAddress`` deletes only this host's reservation; anything else is left
  alone and answered with success (the call is idempotent).

Thread-safe and stateless apart from the ``KV``: every decision is an etcd compare.
Raises ``InvalidRecord``, ``Conflict``, ``NotFound``, ``Exhausted``, ``StoreUnavailable``
(``routes.dispatch`` turns them into ``{"Error": ...}`` answers).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from controller import allocation, ipam
from controller.desired import DesiredState
from controller.model import codec
from controller.model.errors import Conflict, Exhausted, InvalidRecord, NotFound, brief
from controller.model.records import Network, check_label, parse_subnet, parse_subnet6
from controller.plugin import api, lookup, responses
from controller.plugin.keys import GATEWAY_OWNER, reservation_owner
from controller.plugin.lookup import Stored
from controller.store import keys
from controller.store.kv import KV, Compare, Delete, Txn

log = logging.getLogger("heddle.plugin.ipam")

ADDRESS_SPACE_LOCAL = "heddle"
ADDRESS_SPACE_GLOBAL = "heddle-global"
ADDRESS_SPACES = (ADDRESS_SPACE_LOCAL, ADDRESS_SPACE_GLOBAL)
POOL_PREFIX = "heddle/"


@dataclass(frozen=True, slots=True)
class PoolId:
    """``heddle/<network>/<subnet>``: what a Docker pool is, so no call needs a lookup table."""

    network: str
    subnet: str

    def __str__(self) -> str:
        return f"{POOL_PREFIX}{self.network}/{self.subnet}"

    @property
    def six(self) -> bool:
        return ":" in self.subnet

    @classmethod
    def parse(cls, text: str) -> PoolId:
        """Raises ``BadRequest`` naming ``PoolID`` if ``text`` is not one of ours."""
        name, sep, subnet = text.removeprefix(POOL_PREFIX).partition("/")
        try:
            if not text.startswith(POOL_PREFIX) or not sep:
                raise InvalidRecord("not a heddle pool")
            check_label(name, "network")
            parse = parse_subnet6 if ":" in subnet else parse_subnet
            return cls(name, str(parse(subnet)))
        except InvalidRecord:
            raise api.BadRequest(
                f"field PoolID {brief(text)} is not a heddle pool (heddle/<network>/<subnet>)"
            ) from None


def _bare_ip(text: str, field: str) -> str:
    """``10.0.0.5``, ``10.0.0.5/24`` or ``fd00::5/64`` -> the address, canonical;
    ``BadRequest`` naming ``field``."""
    try:
        return str(ipaddress.ip_interface(text).ip)
    except ValueError:
        raise api.BadRequest(f"field {field} {brief(text)} is not an IP address") from None


class IpamDriver:
    """The IPAM handlers of one host's plugin. Thread-safe; holds the ``KV`` and what it knows
    of each pool (``allocation.Pools``, a hint)."""

    def __init__(self, kv: KV, host: str) -> None:
        check_label(host, "host")
        self._kv = kv
        self._host = host
        self._owner = reservation_owner(host)
        self._pools = allocation.Pools()

    # -- argument-less calls -----------------------------------------------------------------
    def capabilities(self, _: api.Empty) -> responses.IpamCapabilities:
        return responses.IpamCapabilities(requires_mac=False, requires_replay=False)

    def address_spaces(self, _: api.Empty) -> responses.AddressSpacesResponse:
        return responses.AddressSpacesResponse(ADDRESS_SPACE_LOCAL, ADDRESS_SPACE_GLOBAL)

    # -- pools -------------------------------------------------------------------------------
    def request_pool(self, req: api.RequestPoolRequest) -> responses.RequestPoolResponse:
        """Validate the pool against etcd; write nothing. Idempotent."""
        name = req.heddle_network()
        if name is None:
            raise api.BadRequest(
                f"missing IPAM option {api.NETWORK_OPTION}: use `docker network create -d heddle "
                f"--ipam-driver heddle -o {api.NETWORK_OPTION}=NAME --ipam-opt "
                f"{api.NETWORK_OPTION}=NAME ...`"
            )
        check_label(name, f"--ipam-opt {api.NETWORK_OPTION}")
        if req.address_space and req.address_space not in ADDRESS_SPACES:
            raise InvalidRecord(
                f"address space {brief(req.address_space)} is not heddle's "
                f"({', '.join(ADDRESS_SPACES)})"
            )
        if req.sub_pool and req.sub_pool != req.pool:
            raise InvalidRecord("--ip-range is not supported: addresses come from the whole subnet")
        stored = lookup.network(self._kv, name)
        if req.v6:
            return self._request_pool6(name, req.pool, stored)
        if stored is not None:
            _with_ipv4(stored.network)
        if req.pool:
            subnet = str(parse_subnet(req.pool, "--subnet"))
            if stored is not None and stored.network.subnet != subnet:
                raise Conflict(
                    f"heddle network {name} has subnet {stored.network.subnet}, not {subnet}: "
                    f"use --subnet {stored.network.subnet} or leave --subnet out"
                )
        elif stored is None:
            raise NotFound(
                f"heddle network {name} does not exist: pass --subnet to create it, or create it "
                f"first with `heddle network create {name} --subnet CIDR`"
            )
        else:
            subnet = _with_ipv4(stored.network)
        data: dict[str, str] = {}
        gateway = self._gateway_of(stored) if stored is not None else None
        if gateway is not None and stored is not None:
            data[api.GATEWAY_DATA] = f"{gateway}/{stored.network.prefixlen_of(gateway)}"
        return responses.RequestPoolResponse(str(PoolId(name, subnet)), subnet, data)

    def _request_pool6(
        self, name: str, pool: str, stored: Stored | None
    ) -> responses.RequestPoolResponse:
        """The IPv6 pool of ``--ipv6``: the heddle network's ``subnet6``. Such a network is
        never created here (Docker asks for the IPv4 pool first, and a network created from it
        would have no IPv6): it must exist, made by ``heddle network create`` with both
        subnets. Writes nothing."""
        subnet6 = stored.network.subnet6 if stored is not None else None
        if stored is None or subnet6 is None:
            raise InvalidRecord(
                f"heddle network {name} {'has no IPv6 subnet' if stored else 'does not exist'}:"
                f" for --ipv6 create it first with `heddle network create {name} --subnet "
                "IPV4-CIDR --subnet IPV6-CIDR` (Docker asks for the IPv4 pool first: a network "
                f"it has just created from --subnet alone goes with `heddle network rm {name}`)"
            )
        if pool and str(parse_subnet6(pool, "--subnet")) != subnet6:
            raise Conflict(
                f"heddle network {name} has IPv6 subnet {subnet6}, not {pool}: use --subnet "
                f"{subnet6} or leave the IPv6 --subnet out"
            )
        data: dict[str, str] = {}
        gateway = self._gateway_of(stored, six=True)
        if gateway is not None:
            data[api.GATEWAY_DATA] = f"{gateway}/{stored.network.prefixlen_of(gateway)}"
        return responses.RequestPoolResponse(str(PoolId(name, subnet6)), subnet6, data)

    def release_pool(self, req: api.PoolRequest) -> responses.Ok:
        """Nothing to undo: the heddle network is shared by every host and outlives Docker's
        pool (``heddle network rm`` removes it). Idempotent."""
        PoolId.parse(req.pool_id)
        return responses.Ok()

    # -- addresses ---------------------------------------------------------------------------
    def request_address(self, req: api.RequestAddressRequest) -> responses.RequestAddressResponse:
        """Reserve an address (``req.address`` or the lowest free one) cluster-wide.

        The gateway request is idempotent (it returns the network's one gateway). Any other
        request is a new reservation by nature; it fails with ``Conflict`` if the address is
        taken and ``Exhausted`` if the pool is full."""
        pool = PoolId.parse(req.pool_id)
        want = _bare_ip(req.address, "Address") if req.address else None
        if req.is_gateway:
            return self._gateway(pool, want)
        stored = self._pool_network(pool)
        ip = self._reserve(stored, want, self._owner, pool.six)
        return responses.RequestAddressResponse(f"{ip}/{stored.network.prefixlen_of(ip)}")

    def release_address(self, req: api.ReleaseAddressRequest) -> responses.Ok:
        """Free this host's reservation of ``req.address``. Idempotent: an address that is not
        reserved by this host (already free, the gateway, someone else's) is left alone."""
        pool = PoolId.parse(req.pool_id)
        ip = _bare_ip(req.address, "Address")
        key = keys.ipam(pool.network, ip)
        mine = codec.encode_owner(self._owner).encode()
        # The usual case, ours to free, in one round trip; anything else is read and decided.
        if self._kv.commit(Txn((Compare(key, "value", "=", mine),), (Delete(key),))).succeeded:
            self._pools.release(pool.network, ip)
            return responses.Ok()
        for _ in range(8):
            got = self._kv.get(key)
            if got is None:
                return responses.Ok()
            owner = codec.decode_owner(got.value)
            if owner != self._owner:
                if owner != GATEWAY_OWNER:
                    log.info("ReleaseAddress %s/%s: held by %r; left", pool.network, ip, owner)
                return responses.Ok()
            txn = Txn(
                compares=(Compare(key, "mod", "=", got.mod_revision),), success=(Delete(key),)
            )
            if self._kv.commit(txn).succeeded:
                self._pools.release(pool.network, ip)
                return responses.Ok()
        raise Conflict(f"address {ip} of {pool.network} keeps changing; try again")

    # -- internals ---------------------------------------------------------------------------
    def _pool_network(self, pool: PoolId) -> Stored:
        stored = lookup.network(self._kv, pool.network)
        if stored is None:
            raise NotFound(
                f"heddle network {pool.network} does not exist any more (removed with `heddle "
                "network rm`?): remove the Docker network and create it again"
            )
        have = stored.network.subnet6 if pool.six else stored.network.subnet
        if have != pool.subnet:
            raise Conflict(
                f"heddle network {pool.network} was re-created with subnets "
                f"{stored.network.subnets} (Docker's pool is {pool.subnet}): remove the Docker "
                "network and create it again"
            )
        return stored

    def _gateway_of(self, stored: Stored, six: bool = False) -> str | None:
        """The network's gateway of one family: its record's, else the address of that family
        reserved as ``GATEWAY_OWNER``."""
        recorded = stored.network.gateway6 if six else stored.network.gateway
        if recorded is not None:
            return recorded
        want = codec.encode_owner(GATEWAY_OWNER).encode()
        for item in self._kv.list(keys.ipam_of(stored.network.name)).items:
            ip = item.key.rsplit("/", 1)[1]
            if item.value == want and (":" in ip) == six:
                return ip
        return None

    def _gateway(self, pool: PoolId, want: str | None) -> responses.RequestAddressResponse:
        prefixlen = ipaddress.ip_network(pool.subnet).prefixlen
        stored = lookup.network(self._kv, pool.network)
        if stored is None and not pool.six:
            first = want or str(next(ipaddress.IPv4Network(pool.subnet).hosts()))
            try:
                DesiredState(self._kv).create_network(pool.network, pool.subnet, gateway=first)
            except Conflict:
                stored = lookup.network(self._kv, pool.network)  # another host was first
                if stored is None:
                    raise
            else:
                log.info("created network %s (%s, gateway %s)", pool.network, pool.subnet, first)
                return responses.RequestAddressResponse(f"{first}/{prefixlen}")
        stored = self._pool_network(pool)
        for _ in range(allocation.RELIST_AFTER):
            gateway = self._gateway_of(stored, pool.six)
            if gateway is not None:
                if want is not None and want != gateway:
                    raise Conflict(
                        f"heddle network {pool.network} has gateway {gateway}; --gateway {want} "
                        "differs (leave --gateway out)"
                    )
                return responses.RequestAddressResponse(f"{gateway}/{prefixlen}")
            # A network without a gateway in its record: reserve one address for it, network
            # wide. One candidate per round, then look again: a host that lost the race must
            # adopt the winner's gateway rather than reserve a second one.
            free = ipam.free_addresses(stored.network, self._taken(stored), pool.six)
            candidate = want or next(free, None)
            if candidate is None:
                raise Exhausted(f"network {pool.network} has no free address for a gateway")
            if want is not None:
                return responses.RequestAddressResponse(
                    f"{self._reserve(stored, want, GATEWAY_OWNER, pool.six)}/{prefixlen}"
                )
            if self._try_reserve(stored, candidate, GATEWAY_OWNER):
                return responses.RequestAddressResponse(f"{candidate}/{prefixlen}")
            stored = self._pool_network(pool)
        raise Conflict(f"could not reserve a gateway for {pool.network}; try again")

    def _taken(self, stored: Stored) -> set[str]:
        return allocation.taken(self._kv, stored.network)

    def _try_reserve(self, stored: Stored, ip: str, owner: str) -> bool:
        claim = allocation.Claim(owner)
        return allocation.try_claim(self._kv, stored.network, stored.kv.mod_revision, (ip,), claim)

    def _reserve(self, stored: Stored, want: str | None, owner: str, six: bool = False) -> str:
        """Reserve ``want`` (or a free address of the family ``six`` says,
        ``controller/allocation.py``) for ``owner``: one ``create_revision == 0`` transaction
        per candidate."""
        net = stored.network
        if want is not None:
            why = ipam.check_requested(net, want)
            if why:
                raise InvalidRecord(why)
            if self._try_reserve(stored, want, owner):
                return want
            self._check_unchanged(stored)
            held = self._kv.get(keys.ipam(net.name, want))
            who = codec.decode_owner(held.value) if held else "someone else"
            raise Conflict(
                f"address {want} in network {net.name} is already in use by {brief(who)}"
            )
        [ip] = allocation.allocate(
            self._kv,
            net,
            stored.kv.mod_revision,
            allocation.Claim(owner),
            lambda ips: self._check_unchanged(stored),
            self._pools,
            (six,),
        )
        return ip

    def _check_unchanged(self, stored: Stored) -> None:
        current = self._kv.get(keys.network(stored.network.name))
        if current is None or current.mod_revision != stored.kv.mod_revision:
            raise Conflict(f"network {stored.network.name!r} was removed or replaced meanwhile")


def _with_ipv4(net: Network) -> str:
    """``net``'s IPv4 subnet; raises ``InvalidRecord`` (retrying cannot help) for an IPv6-only
    network: a Docker network has an IPv4 pool (``--ipv6`` adds the IPv6 one)."""
    if net.subnet is None:
        raise InvalidRecord(
            f"heddle network {net.name} is IPv6-only ({net.subnets}): a Docker network needs "
            "an IPv4 subnet too (a dual-stack heddle network with --ipv6)"
        )
    return net.subnet

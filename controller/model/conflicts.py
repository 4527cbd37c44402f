"""Conflicts between valid records, resolved on read: the older record wins, everywhere. Pure.

The writers' transactions (``controller/desired.py``) never create two endpoints with one
address, two networks with one VNI, and so on -- but any etcd client can write a record by
hand, past every guard key. Each such record is valid alone; together they would hijack
traffic (a second neighbour entry for an address) or merge two tenants (one VNI, one segment).

Rule (the same on every host, so all agents build the same overlay): records are taken in the
order of their etcd ``create_revision`` -- ties, from one transaction, by key -- and a record
that claims something an earlier record holds is skipped, with a reason naming the winner.
The claims:

* a network claims its VNI (a skipped network takes its endpoints with it);
* an endpoint claims its addresses (one per family) and its MAC within its network, and --
  when it names a namespace -- its (host, namespace, interface name) across all networks.

A skipped record claims nothing, so the result depends only on the records, never on the order
in which events arrived. The winner keeps working while the conflict exists; deleting the older
record hands the claim to the next one at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from controller.model.records import Endpoint, Network

EndpointKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Resolved:
    """The records that won, and one reason per skipped record (sorted)."""

    networks: Mapping[str, Network]
    endpoints: Mapping[EndpointKey, Endpoint]
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NetworksDecided:
    """The VNI claims of a set of networks: the winners, and each loser with its winner."""

    won: Mapping[str, Network]
    lost: Mapping[str, str]


def decide_networks(networks: Mapping[str, tuple[int, Network]]) -> NetworksDecided:
    """The network half of ``resolve``: who owns each VNI. Pure; O(n log n). A reader whose
    networks change rarely (``controller/store/interest.py``) decides them once per change
    and passes the result to ``resolve`` for every endpoint change."""
    won_nets: dict[str, Network] = {}
    vni_owner: dict[int, str] = {}
    lost_nets: dict[str, str] = {}
    for name, (_, net) in sorted(networks.items(), key=lambda kv: (kv[1][0], kv[0])):
        holder = vni_owner.get(net.vni)
        if holder is not None:
            lost_nets[name] = holder
            continue
        vni_owner[net.vni] = name
        won_nets[name] = net
    return NetworksDecided(won_nets, lost_nets)


def resolve(
    networks: Mapping[str, tuple[int, Network]],
    endpoints: Mapping[EndpointKey, tuple[int, Endpoint]],
    decided: NetworksDecided | None = None,
) -> Resolved:
    """Keep the older of every conflicting pair; see the module docstring.

    ``networks`` maps name -> (create_revision, record); ``endpoints`` maps (network, id) ->
    (create_revision, record). ``decided``: ``decide_networks(networks)`` if already known.
    Pure; O(n log n); never raises.
    """
    problems: list[str] = []
    if decided is None:
        decided = decide_networks(networks)
    won_nets, lost_nets = decided.won, decided.lost

    dropped: dict[str, int] = {}
    won_eps: dict[EndpointKey, Endpoint] = {}
    claims: dict[tuple[str, ...], EndpointKey] = {}
    for key, (_, ep) in sorted(endpoints.items(), key=lambda kv: (kv[1][0], kv[0])):
        if key[0] in lost_nets:
            dropped[key[0]] = dropped.get(key[0], 0) + 1
            continue
        mine: list[tuple[str, ...]] = [("ip", ep.network, a) for a in ep.addresses]
        mine.append(("mac", ep.network, ep.mac))
        if ep.netns is not None:
            mine.append(("ifname", ep.host, ep.netns, ep.ifname))
        taken = next(((c, claims[c]) for c in mine if c in claims), None)
        if taken is not None:
            what, owner = taken[0][0], taken[1]
            value = {"ip": taken[0][2], "mac": ep.mac}.get(
                what, f"{ep.netns}/{ep.ifname} on {ep.host}"
            )
            label = {"ip": "address", "mac": "MAC"}.get(what, "interface")
            problems.append(
                f"endpoint {key[0]}/{key[1]}: {label} {value} is taken by "
                f"{owner[0]}/{owner[1]} (older); skipped"
            )
            continue
        for c in mine:
            claims[c] = key
        won_eps[key] = ep

    for name, holder in lost_nets.items():
        n = dropped.get(name, 0)
        problems.append(
            f"network {name}: VNI {networks[name][1].vni} is taken by network {holder} (older); "
            f"skipped with its {n} endpoint(s)"
        )
    return Resolved(won_nets, won_eps, tuple(sorted(problems)))


@dataclass(frozen=True, slots=True)
class NetworkResolved:
    """One network's endpoints resolved on their own (address and MAC claims only), as
    ``resolve_apart`` combines them: the winners, the reasons of the skipped, and the
    interface claims (host, namespace, interface name) of every endpoint that names one."""

    won: Mapping[EndpointKey, Endpoint]
    problems: tuple[str, ...]
    interfaces: tuple[tuple[str, str, str], ...]


def resolve_network(endpoints: Mapping[EndpointKey, tuple[int, Endpoint]]) -> NetworkResolved:
    """``resolve`` of one network's endpoints, without the claims that cross networks (the
    interface claims, returned for ``resolve_apart`` to check). Pure; O(n log n)."""
    won = resolve({}, endpoints, NetworksDecided({}, {}))
    interfaces = tuple(
        (ep.host, ep.netns, ep.ifname) for _, ep in endpoints.values() if ep.netns is not None
    )
    return NetworkResolved(won.endpoints, won.problems, interfaces)


def resolve_apart(
    networks: Mapping[str, tuple[int, Network]],
    apart: Mapping[str, NetworkResolved],
    decided: NetworksDecided,
) -> Resolved | None:
    """``resolve`` of the union of networks resolved one by one (``apart``: network name ->
    ``resolve_network`` of its endpoints), or ``None`` when that union cannot tell: two
    endpoints claim one interface, so a skip in one network may free a claim in another --
    then call ``resolve`` on the union. Otherwise the result is exactly ``resolve``'s: the
    address and MAC claims never cross a network, and with no interface claimed twice no
    endpoint is skipped for one. Pure; O(networks + endpoints), no sorting of endpoints --
    what lets a reader re-resolve only the network that changed
    (``controller/store/interest.py``)."""
    seen: set[tuple[str, str, str]] = set()
    problems: list[str] = []
    won: dict[EndpointKey, Endpoint] = {}
    dropped: dict[str, int] = {}
    for name, part in apart.items():
        if name in decided.lost:
            dropped[name] = len(part.won) + len(part.problems)
            continue
        for claim in part.interfaces:
            if claim in seen:
                return None
            seen.add(claim)
        won.update(part.won)
        problems.extend(part.problems)
    for name, holder in decided.lost.items():
        problems.append(
            f"network {name}: VNI {networks[name][1].vni} is taken by network {holder} (older); "
            f"skipped with its {dropped.get(name, 0)} endpoint(s)"
        )
    return Resolved(decided.won, won, tuple(sorted(problems)))

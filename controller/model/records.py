"""Typed records of the public etcd schema (``/heddle/v1/``).

Every record is a frozen dataclass whose constructor validates it, so an instance that exists is
valid: planners and drivers never re-check. Construction is pure and raises ``InvalidRecord``
with a message naming the field.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from controller.model.errors import InvalidRecord, brief

Backend = Literal["kernel", "ovs"]
BACKENDS: tuple[Backend, ...] = ("kernel", "ovs")

VNI_MIN = 1
VNI_MAX = 16_777_215
MAX_PREFIXLEN = 30
MIN_PREFIXLEN = 8
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
#: Ranges an overlay subnet must not touch: their addresses cannot be endpoint addresses.
_NOT_ENDPOINT_SPACE = (
    (_THIS_NETWORK, "'this network'"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved and broadcast"),
)
MTU_MIN = 576
MTU_MAX = 9000 - 50

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
#: A namespace file an endpoint may name by path: absolute, normalised (no empty, ``.`` or
#: ``..`` component), of the characters runtimes use (``/run/netns/...``, ``/proc/PID/ns/net``).
_NETNS_PATH = re.compile(r"^(/(?!\.\.?(/|$))[A-Za-z0-9_.:@+=,-]+)+$")
_NETNS_PATH_MAX = 255
#: A container id as CNI defines it: letters, digits, '_', '.', '-'; here at most 128.
_CONTAINER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_label(value: object, field: str) -> str:
    """Return ``value`` if it is a DNS label (``[a-z0-9-]``, 1..63, no leading/trailing '-')."""
    if not isinstance(value, str) or not _LABEL.match(value):
        raise InvalidRecord(
            f"{field} {brief(value)} is not a valid name: use 1-63 characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_int(value: object, field: str, lo: int, hi: int) -> int:
    """Return ``value`` if it is an int (not bool) within ``lo..hi``."""
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidRecord(f"{field} {brief(value)} must be an integer in {lo}..{hi}")
    return value


def check_ipv4(value: object, field: str) -> ipaddress.IPv4Address:
    """Parse an IPv4 address string; raise ``InvalidRecord`` naming ``field`` otherwise."""
    if not isinstance(value, str):
        raise InvalidRecord(f"{field} {brief(value)} must be an IPv4 address string")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidRecord(f"{field} {brief(value)} is not a valid IPv4 address") from None


MAX_PREFIXLEN6 = 124
MIN_PREFIXLEN6 = 32
#: IPv6 ranges an overlay subnet must not touch (the rest of the space is usable, including
#: unique local addresses, fd00::/8, which is what private overlays normally use).
_NOT_ENDPOINT_SPACE6 = (
    (ipaddress.IPv6Network("::/8"), "unspecified, loopback and IPv4-mapped"),
    (ipaddress.IPv6Network("fe80::/10"), "link-local"),
    (ipaddress.IPv6Network("ff00::/8"), "multicast"),
)
#: IPv6's minimum link MTU (RFC 8200): a network with an IPv6 subnet never goes below it.
MTU_MIN6 = 1280


def check_ipv6(value: object, field: str) -> ipaddress.IPv6Address:
    """Parse an IPv6 address string written in its canonical form (RFC 5952: lower case, the
    longest run of zeros compressed), so that one address has one spelling in every key and
    record; raise ``InvalidRecord`` naming ``field`` and the canonical spelling otherwise."""
    if not isinstance(value, str):
        raise InvalidRecord(f"{field} {brief(value)} must be an IPv6 address string")
    try:
        addr = ipaddress.IPv6Address(value)
    except ValueError:
        raise InvalidRecord(f"{field} {brief(value)} is not a valid IPv6 address") from None
    if str(addr) != value:
        raise InvalidRecord(f"{field} {brief(value)} must be written canonically, as {addr}")
    return addr


def parse_subnet6(value: object, field: str = "subnet6") -> ipaddress.IPv6Network:
    """Parse an IPv6 CIDR: strict, canonical, prefix length /32../124, not link-local,
    multicast or the ::/8 block. Pure; raises ``InvalidRecord``."""
    if not isinstance(value, str):
        raise InvalidRecord(f"{field} {brief(value)} must be a CIDR string such as fd00:1::/64")
    if "/" not in value:
        raise InvalidRecord(f"{field} {brief(value)} needs a prefix length, such as fd00:1::/64")
    try:
        net = ipaddress.IPv6Network(value, strict=True)
    except ValueError as exc:
        why = brief(str(exc), 120)
        raise InvalidRecord(f"{field} {brief(value)} is not a valid IPv6 CIDR: {why}") from None
    if str(net) != value:
        raise InvalidRecord(f"{field} {brief(value)} must be written canonically, as {net}")
    if not MIN_PREFIXLEN6 <= net.prefixlen <= MAX_PREFIXLEN6:
        raise InvalidRecord(
            f"{field} {value}: the prefix length must be /{MIN_PREFIXLEN6}../{MAX_PREFIXLEN6}"
        )
    for special, why in _NOT_ENDPOINT_SPACE6:
        if net.overlaps(special):
            raise InvalidRecord(f"{field} {value} overlaps {special} ({why}): not for endpoints")
    return net


def parse_subnet(value: object, field: str = "subnet") -> ipaddress.IPv4Network:
    """Parse a CIDR: strict (no host bits), IPv4, prefix length at most /30."""
    if not isinstance(value, str):
        raise InvalidRecord(f"{field} {brief(value)} must be a CIDR string such as 10.1.0.0/24")
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        why = brief(str(exc), 120)
        raise InvalidRecord(f"{field} {brief(value)} is not a valid IPv4 CIDR: {why}") from None
    if "/" not in value:
        raise InvalidRecord(f"{field} {brief(value)} needs a prefix length, such as 10.1.0.0/24")
    if net.prefixlen > MAX_PREFIXLEN:
        raise InvalidRecord(
            f"{field} {value} is too small: the prefix length must be at most /{MAX_PREFIXLEN}"
        )
    if net.prefixlen < MIN_PREFIXLEN:
        raise InvalidRecord(
            f"{field} {value} is too large: the prefix length must be at least /{MIN_PREFIXLEN}"
        )
    for special, why in _NOT_ENDPOINT_SPACE:
        if net.overlaps(special):
            raise InvalidRecord(f"{field} {value} overlaps {special} ({why}): not for endpoints")
    return net


def check_vtep(value: object, field: str = "vtep", *, allow_link_local: bool = False) -> str:
    """Return ``value`` if it is a unicast IPv4 or IPv6 address a VXLAN peer can be reached at.

    Refused: loopback, multicast, the limited broadcast and the rest of 240.0.0.0/4,
    unspecified (0.0.0.0/8, ::), IPv4-mapped IPv6 -- an FDB or flood entry towards any of them
    sends a network's broadcasts to every host on the underlay, or nowhere. Link-local
    (169.254.0.0/16, fe80::/10) only with ``allow_link_local``: it is valid on some underlays
    but usually a DHCP failure (and an IPv6 one needs an interface to go with it). An IPv6
    VTEP is written canonically. Pure.
    """
    if isinstance(value, str) and ":" in value:
        addr6 = check_ipv6(value, field)
        bad6 = (
            "loopback" if addr6.is_loopback
            else "multicast" if addr6.is_multicast
            else "unspecified" if addr6.is_unspecified
            else "IPv4-mapped" if addr6.ipv4_mapped is not None
            else "link-local" if addr6.is_link_local and not allow_link_local
            else None
        )  # fmt: skip
        if bad6 is not None:
            raise InvalidRecord(f"{field} {addr6} is a {bad6} address, not a usable unicast VTEP")
        return str(addr6)
    addr = check_ipv4(value, field)
    bad = (
        "loopback" if addr.is_loopback
        else "multicast" if addr.is_multicast
        else "broadcast or reserved" if addr.is_reserved or addr == _BROADCAST
        else "unspecified" if addr in _THIS_NETWORK
        else "link-local" if addr.is_link_local and not allow_link_local
        else None
    )  # fmt: skip
    if bad is not None:
        raise InvalidRecord(f"{field} {addr} is a {bad} address, not a usable unicast VTEP")
    return str(addr)


def check_netns(value: object, field: str = "netns") -> str:
    """Return ``value`` if it names a network namespace: a name under ``/run/netns`` (1-15 of
    ``A-Za-z0-9_.-``) or an absolute, normalised path of at most 255 characters
    (``/run/netns/NAME``, ``/var/run/netns/NAME``, ``/proc/PID/ns/net``, ...). Pure; raises
    ``InvalidRecord``. Whether the file is a network namespace is the agent's check when it
    uses it (a file that is none fails that endpoint); its host's own namespace is refused."""
    named = isinstance(value, str) and value not in (".", "..") and bool(_IFNAME.match(value))
    pathed = isinstance(value, str) and len(value) <= _NETNS_PATH_MAX and _NETNS_PATH.match(value)
    if named or pathed:
        return str(value)
    raise InvalidRecord(
        f"{field} {brief(value)} is not a namespace name (1-15 of A-Z a-z 0-9 _ . -) or an "
        "absolute path such as /run/netns/NAME or /proc/PID/ns/net"
    )


def _check_gateway(
    gw: ipaddress.IPv4Address | ipaddress.IPv6Address,
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
    field: str,
    subnet_field: str,
) -> None:
    """Raise ``InvalidRecord`` unless ``gw`` is a usable address of ``net`` (inside it, not its
    first or last address)."""
    if gw not in net or gw in (net.network_address, net.broadcast_address):
        raise InvalidRecord(f"{field} {gw} is not a usable address of {subnet_field} {net}")


EGRESS_MODES = ("masquerade",)


@functools.lru_cache(maxsize=1 << 12)
def _ipv4_network(subnet: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(subnet)


@functools.lru_cache(maxsize=1 << 12)
def _ipv6_network(subnet: str) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(subnet)


@dataclass(frozen=True, slots=True)
class Network:
    """An overlay network: one L2 segment (one VNI) with an IPv4 subnet, an IPv6 subnet
    (``subnet6``), or both (dual-stack). At least one; one per family.

    ``gateway`` / ``gateway6``: the address of each family endpoints route through (a usable
    address of that family's subnet). ``egress``: ``"masquerade"`` lets its endpoints reach
    addresses outside the overlay through the IPv4 ``gateway`` (held by every host with a local
    endpoint, masqueraded out of that host's uplink); ``None`` (the default) routes nothing.
    IPv6 egress is not offered. A network with ``subnet6`` has an MTU of at least 1280."""

    name: str
    vni: int
    subnet: str | None
    gateway: str | None = None
    mtu: int | None = None
    egress: str | None = None
    subnet6: str | None = None
    gateway6: str | None = None

    def __post_init__(self) -> None:
        check_label(self.name, "network name")
        check_int(self.vni, "vni", VNI_MIN, VNI_MAX)
        if self.subnet is None and self.subnet6 is None:
            raise InvalidRecord("a network needs a subnet: IPv4 (subnet), IPv6 (subnet6) or both")
        if self.subnet is not None:
            net = parse_subnet(self.subnet)
            if self.gateway is not None:
                _check_gateway(check_ipv4(self.gateway, "gateway"), net, "gateway", "subnet")
        elif self.gateway is not None:
            raise InvalidRecord("gateway is an IPv4 address: the network has no IPv4 subnet")
        if self.subnet6 is not None:
            net6 = parse_subnet6(self.subnet6)
            if self.gateway6 is not None:
                gw6 = check_ipv6(self.gateway6, "gateway6")
                _check_gateway(gw6, net6, "gateway6", "subnet6")
        elif self.gateway6 is not None:
            raise InvalidRecord("gateway6 needs subnet6: the network has no IPv6 subnet")
        if self.mtu is not None:
            check_int(self.mtu, "mtu", MTU_MIN6 if self.subnet6 else MTU_MIN, MTU_MAX)
        if self.egress is not None:
            if self.egress not in EGRESS_MODES:
                modes = ", ".join(EGRESS_MODES)
                raise InvalidRecord(f"egress {brief(self.egress)} must be one of {modes} (or null)")
            if self.gateway is None:
                raise InvalidRecord(
                    "egress needs a gateway (IPv4): the address endpoints route through"
                )

    @property
    def network(self) -> ipaddress.IPv4Network | None:
        """The IPv4 subnet (None: the network has none). Parsed once per subnet string: a
        view checks every endpoint against it."""
        return _ipv4_network(self.subnet) if self.subnet is not None else None

    @property
    def network6(self) -> ipaddress.IPv6Network | None:
        """The IPv6 subnet (None: the network has none); parsed once per subnet string."""
        return _ipv6_network(self.subnet6) if self.subnet6 is not None else None

    @property
    def subnets(self) -> str:
        """The subnets for messages: ``10.1.0.0/24``, ``fd00:1::/64`` or both, comma-joined."""
        return ",".join(s for s in (self.subnet, self.subnet6) if s is not None)

    def prefixlen_of(self, ip: str) -> int:
        """The prefix length of the subnet of ``ip``'s family. Pure."""
        if ":" in ip:
            assert self.subnet6 is not None, "an IPv6 address of a network without subnet6"
            return int(self.subnet6.rsplit("/", 1)[1])
        assert self.subnet is not None, "an IPv4 address of a network without subnet"
        return int(self.subnet.rsplit("/", 1)[1])


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One interface of a network on one host.

    ``netns`` is the namespace the interface is moved into: a name (``/run/netns/<netns>``) or
    an absolute path (``/run/netns/...``, ``/var/run/netns/...``, ``/proc/PID/ns/net``); ``None``
    leaves the peer in the host namespace for someone else (Docker) to move. ``container``: the
    container id a CNI runtime gave (its DEL and GC find the endpoint by it); None otherwise.
    ``ip`` / ``ip6``: its IPv4 / IPv6 address, one for each family its network has (a record
    with an address its network has no subnet for is reported by the agents, not realised).
    """

    id: str
    network: str
    host: str
    ip: str | None
    mac: str
    netns: str | None = None
    ifname: str = "eth0"
    container: str | None = None
    ip6: str | None = None

    def __post_init__(self) -> None:
        check_label(self.id, "endpoint id")
        check_label(self.network, "network")
        check_label(self.host, "host")
        if self.ip is None and self.ip6 is None:
            raise InvalidRecord("an endpoint needs an address: ip (IPv4), ip6 (IPv6) or both")
        if self.ip is not None:
            check_ipv4(self.ip, "ip")
        if self.ip6 is not None:
            check_ipv6(self.ip6, "ip6")
        if not isinstance(self.mac, str) or not _MAC.match(self.mac):
            raise InvalidRecord(f"mac {brief(self.mac)} must look like 02:00:0a:01:00:02 (lower)")
        if int(self.mac[:2], 16) & 1:
            raise InvalidRecord(f"mac {self.mac} is a multicast address")
        if self.netns is not None:
            check_netns(self.netns)
        if self.container is not None and (
            not isinstance(self.container, str) or not _CONTAINER.match(self.container)
        ):
            raise InvalidRecord(
                f"container {brief(self.container)} is not a container id (1-128 of A-Z a-z "
                "0-9 _ . -)"
            )
        if not isinstance(self.ifname, str) or not _IFNAME.match(self.ifname):
            raise InvalidRecord(f"ifname {brief(self.ifname)} is not an interface name (<= 15)")

    @property
    def addresses(self) -> tuple[str, ...]:
        """Its addresses, IPv4 first: one or two."""
        return tuple(a for a in (self.ip, self.ip6) if a is not None)

    @property
    def address(self) -> str:
        """Its IPv4 address if it has one, else its IPv6 address: the one to name it by."""
        return self.ip if self.ip is not None else str(self.ip6)


@dataclass(frozen=True, slots=True)
class Host:
    """A host that runs an agent: its VTEP (underlay address, IPv4 or IPv6) and data-plane
    backend."""

    name: str
    vtep: str
    underlay_mtu: int = 1500
    backend: Backend = "kernel"
    version: str = ""

    def __post_init__(self) -> None:
        check_label(self.name, "host name")
        # link-local passes here; whether peers accept it is the agent's setting (host_view)
        check_vtep(self.vtep, "vtep", allow_link_local=True)
        check_int(self.underlay_mtu, "underlay_mtu", MTU_MIN + 50, 9000)
        if self.backend not in BACKENDS:
            choices = ", ".join(BACKENDS)
            raise InvalidRecord(f"backend {brief(self.backend)} must be one of {choices}")
        if not isinstance(self.version, str) or len(self.version) > 64:
            raise InvalidRecord(f"version {brief(self.version)} must be a string of <= 64")


@dataclass(frozen=True, slots=True)
class Alive:
    """Liveness of a host's agent; lives on a lease, so it vanishes when the agent stops."""

    since: float
    pid: int


@dataclass(frozen=True, slots=True)
class HostStatus:
    """What an agent last did: the revision it applied, when, and what went wrong.

    Bounded whatever is in etcd: ``errors`` and ``skipped`` hold at most ``STATUS_MAX_REASONS``
    reasons of at most ``STATUS_MAX_REASON`` characters each; ``skipped_count`` is the full
    count. ``stuck`` says why the agent is not following etcd (None while it is).
    ``metrics``: ``ADDR:PORT`` where the agent serves metrics and diagnostics (None: not served).
    ``notices``: what the agent had to repair that someone else broke (bounded like ``errors``;
    for example its own host record, rewritten by another etcd client and put back).
    """

    host: str
    revision: int
    last_pass: float
    ok: bool
    changes: int = 0
    errors: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    skipped_count: int = 0
    stuck: str | None = None
    metrics: str | None = None
    notices: tuple[str, ...] = ()


STATUS_MAX_REASONS = 5
STATUS_MAX_REASON = 200


def clip_reasons(reasons: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The first ``STATUS_MAX_REASONS`` reasons, each cut to ``STATUS_MAX_REASON`` characters.

    Pure. Why: a status record is rewritten on every pass; copying every bad record's reason
    into it made one hostile key grow etcd by megabytes per pass."""
    out = []
    for r in reasons[:STATUS_MAX_REASONS]:
        out.append(r if len(r) <= STATUS_MAX_REASON else r[: STATUS_MAX_REASON - 3] + "...")
    return tuple(out)

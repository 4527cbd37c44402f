"""OpenFlow flows in one canonical form: the vocabulary the ovs planner renders, the OpenFlow
driver installs and dumps, and the fake OVS holds. Pure.

``make_flow`` canonicalises what the planner writes and ``parse_flow`` what ``ovs-ofctl
dump-flows`` prints, so a dumped table compares equal with a rendered one: field synonyms
(``eth_src`` -> ``dl_src``), integers in decimal, reserved port names upper case, MACs lower
case, ``load:`` and ``mod_dl_*`` actions as ``set_field``, and match fields in a fixed order.
Every flow heddle installs carries ``COOKIE``; flows without it are someone else's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

COOKIE = 0x68646C65  # "hdle"
REG_VNI = "reg6"
DROP = "drop"


_SHORTHANDS = ("arp", "ip", "ipv6", "icmp6")
_FIELD_ORDER = (
    "arp", "ip", "ipv6", "icmp6", REG_VNI, "tun_id", "tun_src", "tun_ipv6_src", "in_port",
    "dl_src", "dl_dst", "arp_op", "arp_spa", "arp_tpa", "arp_sha", "nw_src", "ipv6_src",
    "icmp_type", "nd_target",
)  # fmt: skip
_RANK = {name: i for i, name in enumerate(_FIELD_ORDER)}
_SYNONYMS = {
    "eth_src": "dl_src", "eth_dst": "dl_dst", "ip_src": "nw_src", "tunnel_id": "tun_id",
    "icmpv6_type": "icmp_type",
}  # fmt: skip
_RESERVED_PORTS = frozenset({"LOCAL", "IN_PORT", "CONTROLLER", "ALL", "FLOOD", "NORMAL", "NONE"})
_NXM_ALIASES = {
    "NXM_OF_ARP_OP": "arp_op",
    "NXM_OF_ETH_SRC": "eth_src",
    "NXM_OF_ETH_DST": "eth_dst",
    "NXM_NX_ARP_SHA": "arp_sha",
    "NXM_OF_ARP_SPA": "arp_spa",
    "NXM_NX_TUN_ID": "tun_id",
    "NXM_NX_TUN_IPV4_DST": "tun_dst",
    "NXM_NX_IPV6_SRC": "ipv6_src",
    "NXM_NX_IPV6_DST": "ipv6_dst",
    **{f"NXM_NX_REG{i}": f"reg{i}" for i in range(16)},
}
_INT = re.compile(r"^(0x[0-9a-f]+|[0-9]+)$")
_LOAD = re.compile(r"^load:([^-]+)->([A-Z0-9_]+)\[\]$")
_SET_FIELD = re.compile(r"^set_field:(.+)->([a-z0-9_]+)$")


def _canon_value(value: str | int) -> str:
    """Integers (decimal or hex) as decimal, reserved port names upper case, everything else
    lower case (MACs)."""
    text = str(value).strip()
    if text.upper() in _RESERVED_PORTS:
        return text.upper()
    text = text.lower()
    return str(int(text, 0)) if _INT.match(text) else text


def _canon_action(action: str) -> str:
    a = action.strip()
    if a.upper() in _RESERVED_PORTS:
        return a.upper()
    if a.isdigit():
        return f"output:{a}"
    if a.startswith("output:"):
        port = a[len("output:") :]
        return port.upper() if port.upper() in _RESERVED_PORTS else f"output:{int(port, 0)}"
    if a.startswith(("mod_dl_src:", "mod_dl_dst:")):
        field = "eth_src" if a.startswith("mod_dl_src:") else "eth_dst"
        return f"set_field:{a.split(':', 1)[1].lower()}->{field}"
    m = _LOAD.match(a)
    if m and m.group(2) in _NXM_ALIASES:
        return f"set_field:{_canon_value(m.group(1))}->{_NXM_ALIASES[m.group(2)]}"
    m = _SET_FIELD.match(a)
    if m:
        return f"set_field:{_canon_value(m.group(1))}->{m.group(2)}"
    return a


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside ``()`` or ``[]``."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _match_key(item: tuple[str, str]) -> tuple[int, str]:
    return (_RANK.get(item[0], len(_RANK)), item[0])


@dataclass(frozen=True, slots=True, order=True)
class Flow:
    """One OpenFlow flow in canonical form (build with ``make_flow`` or ``parse_flow``).

    ``match`` is a tuple of ``(field, value)`` pairs in a fixed field order (shorthands such as
    ``arp`` have value ``""``); ``actions`` the action list; ``key`` is what identifies a flow in
    a table (OpenFlow: table, priority and match), so a table holds at most one flow per key.
    """

    table: int
    priority: int
    match: tuple[tuple[str, str], ...]
    actions: tuple[str, ...]
    cookie: int = COOKIE
    # Computed once: planning hashes and keys tens of thousands of flows per pass.
    key: tuple[int, int, tuple[tuple[str, str], ...]] = field(init=False, compare=False, repr=False)
    _hash: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        key = (self.table, self.priority, self.match)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "_hash", hash((key, self.actions, self.cookie)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def match_dict(self) -> dict[str, str]:
        return dict(self.match)

    def _match_text(self) -> str:
        return ",".join(k if v == "" else f"{k}={v}" for k, v in self.match)

    def text(self) -> str:
        """The flow as one ``ovs-ofctl add-flow``/flow-file line."""
        match = self._match_text()
        return (
            f"cookie={self.cookie:#x},table={self.table},priority={self.priority}"
            f"{',' + match if match else ''},actions={','.join(self.actions) or DROP}"
        )

    def strict_text(self) -> str:
        """The flow's identity for ``delete_strict``, scoped to its cookie."""
        match = self._match_text()
        return (
            f"cookie={self.cookie:#x}/-1,table={self.table},priority={self.priority}"
            f"{',' + match if match else ''}"
        )

    def __str__(self) -> str:
        return self.text()


def make_flow(
    table: int,
    priority: int,
    match: Mapping[str, str | int],
    actions: Sequence[str],
    cookie: int = COOKIE,
) -> Flow:
    """A ``Flow`` in canonical form. Pure; raises ``ValueError`` for a malformed action."""
    canon = {
        _SYNONYMS.get(k, k): "" if k in _SHORTHANDS else _canon_value(v) for k, v in match.items()
    }
    acts = [_canon_action(a) for a in actions]
    return make_canonical_flow(table, priority, canon, acts, cookie)


def make_canonical_flow(
    table: int,
    priority: int,
    match: Mapping[str, str | int],
    actions: Sequence[str],
    cookie: int = COOKIE,
) -> Flow:
    """``make_flow`` for values that are already canonical (decimal integers, lower-case MACs,
    dotted IPv4 from validated records, canonical actions): only the match fields are ordered.
    Canonicalising values is most of the cost of rendering a 10,000-flow table; the renderer's
    unit test checks that every flow it makes this way is a fixed point of ``make_flow``."""
    names = tuple(match)
    order = _ORDERS.get(names)
    if order is None:  # a shape not seen yet: sort its field names once
        if len(_ORDERS) >= _ORDERS_MAX:
            _ORDERS.clear()
        order = _ORDERS[names] = tuple(sorted(names, key=lambda k: _match_key((k, ""))))
    pairs = tuple((k, "" if k in _SHORTHANDS else str(match[k])) for k in order)
    return Flow(table, priority, pairs, tuple(actions), cookie)


_ORDERS: dict[tuple[str, ...], tuple[str, ...]] = {}
"""Match field names as given -> in canonical order. A renderer makes a few dozen shapes of
match over and over; sorting each flow's fields again was most of the cost of re-rendering a
network on the path to a new endpoint's first packet. Bounded: parsed dumps may bring any
shape."""
_ORDERS_MAX = 4096


_HEAD = re.compile(r"^\s*(?P<fields>.*?)\s+actions=(?P<actions>.*)$")


def parse_flow(line: str) -> Flow | None:
    """Parse one ``ovs-ofctl dump-flows --no-stats --no-names`` line; ``None`` for lines
    that are not flows (headers, blank). Pure; raises ``ValueError`` for a garbled flow."""
    m = _HEAD.match(line)
    if m is None:
        return None
    cookie, table, priority = 0, 0, 32768
    match: dict[str, str | int] = {}
    for token in _split_top(m.group("fields").replace(", ", ",")):
        name, eq, value = token.partition("=")
        name = name.strip()
        if not eq:
            match[name] = ""
        elif name == "cookie":
            cookie = int(value.split("/")[0], 0)
        elif name == "table":
            table = int(value)
        elif name == "priority":
            priority = int(value)
        elif name in ("duration", "n_packets", "n_bytes", "idle_age", "hard_age", "reset_counts"):
            continue
        else:
            match[name] = value
    actions = _split_top(m.group("actions"))
    return make_flow(table, priority, match, actions, cookie)


def parse_flows(text: str) -> frozenset[Flow]:
    """Every flow in a ``dump-flows`` output. Pure."""
    out: set[Flow] = set()
    for line in text.splitlines():
        flow = parse_flow(line)
        if flow is not None:
            out.add(flow)
    return frozenset(out)

"""The OpenFlow table of the ovs backend as a pure function of the host view. Pure throughout.

Pipeline on the integration bridge (no NORMAL action, no learning; ``reg6`` carries the VNI):

====== ===================================================================================
table  what
====== ===================================================================================
0      classify. From a local endpoint port: only IPv4 with the port's own source MAC and
       address, or ARP whose Ethernet/ARP sender MAC and sender address are the port's own
       (anti-spoofing) -> set reg6=VNI, IPv4 to 20, ARP to 10. From the tunnel port: only
       ``tun_id`` = VNI from the VTEP of another member host of that network -> set reg6,
       to 30. Everything else: drop.
10     ARP responder: a request for any endpoint of the network (local or remote) is answered
       in place and sent back out of the input port. A request for an address nobody has is
       dropped (every endpoint is known, so nobody would answer; and no ARP crosses the
       underlay). Other ARP (replies) continues to 20.
20     from a local port: unicast to a local port, or ``tun_id``=VNI, ``tun_dst``=the owner's
       VTEP and out of the tunnel port; broadcast/multicast per input port to the other local
       members and once to each other member host (head-end replication). Else drop.
30     from the tunnel: unicast to a local port of that network, broadcast/multicast to all
       local members. Else drop (never back into the tunnel).
====== ===================================================================================

br-phy (``netdev`` datapath only) gets two flows, NIC <-> LOCAL, where the userspace datapath
pushes and pops tunnel headers (docs/platform.md O3).

Every flow carries ``COOKIE`` (ownership: observation dumps only flows with it; deletes are
cookie-scoped). ``Flow`` keeps a canonical form of match and actions, the one ``ovs-ofctl
-O OpenFlow14 dump-flows`` prints back (hex registers, ``LOCAL`` for ``output:LOCAL``, ...), so a
dumped table parses (``parse_flows``) into values that compare equal with rendered ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from controller.model.view import HostView, NetworkView

COOKIE = 0x68646C65  # "hdle"
T_CLASSIFY, T_ARP, T_L2, T_TUNNEL = 0, 10, 20, 30
REG_VNI = "reg6"
MULTICAST = "01:00:00:00:00:00/01:00:00:00:00:00"
P_DEFAULT, P_UNKNOWN_ARP, P_FLOOD, P_MATCH = 0, 50, 50, 100
P_PHY = 10
LOCAL = "LOCAL"
DROP = "drop"

Match = Mapping[str, str | int]
EndpointKey = tuple[str, str]
"""``(network, endpoint id)``: how ``ofports`` name a local endpoint."""

_SHORTHANDS = ("arp", "ip")
_FIELD_ORDER = (
    "arp", "ip", REG_VNI, "tun_id", "tun_src", "in_port", "dl_src", "dl_dst",
    "arp_op", "arp_spa", "arp_tpa", "arp_sha", "nw_src",
)  # fmt: skip
_RANK = {name: i for i, name in enumerate(_FIELD_ORDER)}
_SYNONYMS = {"eth_src": "dl_src", "eth_dst": "dl_dst", "ip_src": "nw_src", "tunnel_id": "tun_id"}
_RESERVED_PORTS = frozenset({"LOCAL", "IN_PORT", "CONTROLLER", "ALL", "FLOOD", "NORMAL", "NONE"})
_NXM_ALIASES = {
    "NXM_OF_ARP_OP": "arp_op",
    "NXM_OF_ETH_SRC": "eth_src",
    "NXM_OF_ETH_DST": "eth_dst",
    "NXM_NX_ARP_SHA": "arp_sha",
    "NXM_OF_ARP_SPA": "arp_spa",
    "NXM_NX_TUN_ID": "tun_id",
    "NXM_NX_TUN_IPV4_DST": "tun_dst",
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

    @property
    def key(self) -> tuple[int, int, tuple[tuple[str, str], ...]]:
        return (self.table, self.priority, self.match)

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
    pairs = tuple(
        sorted(
            (
                (_SYNONYMS.get(k, k), "" if k in _SHORTHANDS else _canon_value(v))
                for k, v in match.items()
            ),
            key=_match_key,
        )
    )
    acts = tuple(_canon_action(a) for a in actions)
    return Flow(table, priority, pairs, acts, cookie)


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


# -- rendering ----------------------------------------------------------------------------------


def _arp_reply(mac: str, ip: str) -> list[str]:
    """Turn an ARP request for ``ip`` into the reply ``ip is-at mac``, back out of its port."""
    return [
        "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]",
        f"set_field:{mac}->eth_src",
        "set_field:2->arp_op",
        "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[]",
        f"set_field:{mac}->arp_sha",
        "move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[]",
        f"set_field:{ip}->arp_spa",
        "IN_PORT",
    ]


class _Table:
    """Flows keyed by (table, priority, match): the first flow for a key wins, so a MAC or
    address claimed twice is realised once, deterministically (the view is sorted)."""

    def __init__(self) -> None:
        self.flows: dict[tuple[int, int, tuple[tuple[str, str], ...]], Flow] = {}

    def add(
        self, table: int, priority: int, match: Mapping[str, str | int], actions: Sequence[str]
    ) -> None:
        """Add a flow whose values are already canonical (decimal integers, lower-case MACs,
        dotted IPv4 from validated records), skipping ``make_flow``'s canonicalisation: it is
        most of the cost of a 10,000-flow table. A unit test checks every rendered flow is a
        fixed point of ``make_flow``."""
        pairs = tuple(
            sorted(
                ((k, "" if k in _SHORTHANDS else str(v)) for k, v in match.items()),
                key=_match_key,
            )
        )
        flow = Flow(table, priority, pairs, tuple(actions))
        self.flows.setdefault(flow.key, flow)


def render_flows(
    view: HostView, ofports: Mapping[EndpointKey, int], tunnel_ofport: int
) -> tuple[Flow, ...]:
    """The complete table of the integration bridge for ``view`` (see the module docstring).

    ``ofports`` maps each local endpoint to its (pinned) OpenFlow port; endpoints missing from it
    get no flows. Pure and deterministic (view order; not sorted, which would cost a third of
    the rendering of a 10,000-flow table); the result holds one flow per key.
    """
    t = _Table()
    t.add(T_CLASSIFY, P_DEFAULT, {}, [DROP])
    t.add(T_ARP, P_DEFAULT, {}, [f"goto_table:{T_L2}"])
    t.add(T_L2, P_DEFAULT, {}, [DROP])
    t.add(T_TUNNEL, P_DEFAULT, {}, [DROP])
    for nv in view.networks:
        _render_network(t, nv, ofports, tunnel_ofport)
    return tuple(t.flows.values())


def _render_network(
    t: _Table, nv: NetworkView, ofports: Mapping[EndpointKey, int], tunnel: int
) -> None:
    vni = nv.network.vni
    set_vni = f"set_field:{vni}->{REG_VNI}"
    local = [(ep, ofports[ep.network, ep.id]) for ep in nv.local if (ep.network, ep.id) in ofports]

    for vtep in nv.flood:
        match: dict[str, str | int] = {"in_port": tunnel, "tun_id": vni, "tun_src": vtep}
        t.add(T_CLASSIFY, P_MATCH, match, [set_vni, f"goto_table:{T_TUNNEL}"])
    for ep, port in local:
        ip_match: Match = {"ip": "", "in_port": port, "dl_src": ep.mac, "nw_src": ep.ip}
        t.add(T_CLASSIFY, P_MATCH, ip_match, [set_vni, f"goto_table:{T_L2}"])
        arp_match: Match = {
            "arp": "", "in_port": port, "dl_src": ep.mac, "arp_sha": ep.mac, "arp_spa": ep.ip,
        }  # fmt: skip
        t.add(T_CLASSIFY, P_MATCH, arp_match, [set_vni, f"goto_table:{T_ARP}"])

    owners: Iterable[tuple[str, str]] = [
        *((ep.ip, ep.mac) for ep in nv.local),
        *((r.ip, r.mac) for r in nv.remote),
    ]
    for ip, mac in owners:
        match = {"arp": "", REG_VNI: vni, "arp_op": 1, "arp_tpa": ip}
        t.add(T_ARP, P_MATCH, match, _arp_reply(mac, ip))
    t.add(T_ARP, P_UNKNOWN_ARP, {"arp": "", REG_VNI: vni, "arp_op": 1}, [DROP])

    for ep, port in local:
        t.add(T_L2, P_MATCH, {REG_VNI: vni, "dl_dst": ep.mac}, [f"output:{port}"])
        t.add(T_TUNNEL, P_MATCH, {REG_VNI: vni, "dl_dst": ep.mac}, [f"output:{port}"])
    for r in nv.remote:
        to_vtep = [f"set_field:{vni}->tun_id", f"set_field:{r.vtep}->tun_dst", f"output:{tunnel}"]
        t.add(T_L2, P_MATCH, {REG_VNI: vni, "dl_dst": r.mac}, to_vtep)

    replicate: list[str] = []
    if nv.flood:
        replicate.append(f"set_field:{vni}->tun_id")
        for vtep in nv.flood:
            replicate += [f"set_field:{vtep}->tun_dst", f"output:{tunnel}"]
    ports = sorted({port for _, port in local})
    for port in ports:
        others = [f"output:{q}" for q in ports if q != port]
        match = {REG_VNI: vni, "in_port": port, "dl_dst": MULTICAST}
        t.add(T_L2, P_FLOOD, match, [*others, *replicate] or [DROP])
    t.add(
        T_TUNNEL,
        P_FLOOD,
        {REG_VNI: vni, "dl_dst": MULTICAST},
        [f"output:{p}" for p in ports] or [DROP],
    )


def render_phy_flows(nic_ofport: int) -> tuple[Flow, ...]:
    """br-phy's table: the underlay NIC and the bridge's LOCAL port (which carries the VTEP
    address, and where the userspace datapath pops tunnel headers) talk only to each other."""
    return tuple(
        sorted(
            (
                make_flow(T_CLASSIFY, P_DEFAULT, {}, [DROP]),
                make_flow(T_CLASSIFY, P_PHY, {"in_port": nic_ofport}, [LOCAL]),
                make_flow(T_CLASSIFY, P_PHY, {"in_port": LOCAL}, [f"output:{nic_ofport}"]),
            )
        )
    )

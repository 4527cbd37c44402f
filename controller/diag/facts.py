"""``NetworkFacts``: what one agent observes of one network's data plane, in backend-neutral
terms, and its JSON form (the answer of ``GET /diag/networks/<name>`` on the metrics port).

Why backend-neutral: ``heddle trace`` follows a path across hosts that may run different
backends (a mixed lab); it asks the same questions of each (is the endpoint's interface up, is
it attached to the network's switch, where do frames for this MAC go, which VTEPs are accepted
for this VNI) and each backend answers them from its own observed state (``kernel_facts``,
``ovs_facts``).

``decode_facts`` reads an agent's answer: total (anything malformed is ``InvalidRecord``) and
bounded (``MAX_FACTS_BYTES``), because the CLI must not trust a port it merely connected to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from controller.model.errors import InvalidRecord, brief
from controller.model.json_value import load_object

MAX_FACTS_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class LinkFacts:
    """A device on the path. ``attached``: joined to the network's switch (kernel: its bridge
    is the master; ovs: a port of the integration bridge with an OpenFlow port number).
    ``detail`` is the evidence in words (master, VNI, ofport, ...)."""

    name: str
    present: bool
    up: bool = False
    mtu: int = 0
    attached: bool = False
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SideFacts:
    """The endpoint's interface inside its namespace. ``known`` False: not observable by the
    agent (a Docker endpoint: Docker holds the namespace); the other fields are then empty.
    ``addresses`` are ``ip/prefixlen``."""

    netns: str | None
    ifname: str
    known: bool = True
    present: bool = False
    up: bool = False
    mtu: int = 0
    addresses: tuple[str, ...] = ()
    gateway: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class EndpointFacts:
    """A local endpoint. ``ip``: its address, or its two comma-joined (IPv4 first) in a
    dual-stack network. ``delivers``: frames for ``mac`` that arrive from the tunnel reach
    its interface (kernel: the veth is in the bridge; ovs: table 30 outputs them to its port)."""

    id: str
    ip: str
    mac: str
    veth: LinkFacts
    side: SideFacts
    delivers: bool = False


@dataclass(frozen=True, slots=True)
class NetworkFacts:
    """One agent's observation of one network. ``forwarding``: MAC -> VTEP of the unicast
    entries towards other hosts (kernel: FDB; ovs: table 20). ``accepts``: the VTEPs from
    which this host takes the VNI, or ``None`` when it takes it from any source."""

    host: str
    backend: str
    vtep: str
    network: str
    vni: int
    mtu: int
    bridge: LinkFacts
    tunnel: LinkFacts
    forwarding: Mapping[str, str] = field(default_factory=dict)
    accepts: tuple[str, ...] | None = None
    endpoints: tuple[EndpointFacts, ...] = ()
    observed_at: float = 0.0

    def endpoint(self, endpoint_id: str) -> EndpointFacts | None:
        for ep in self.endpoints:
            if ep.id == endpoint_id:
                return ep
        return None


def encode_facts(facts: NetworkFacts) -> str:
    obj = asdict(facts)
    obj["forwarding"] = dict(facts.forwarding)
    return json.dumps(obj, sort_keys=True)


def _link(o: Any) -> LinkFacts:
    return LinkFacts(
        name=_s(o["name"]),
        present=_b(o["present"]),
        up=_b(o["up"]),
        mtu=_i(o["mtu"]),
        attached=_b(o["attached"]),
        detail=_s(o["detail"]),
    )


def _side(o: Any) -> SideFacts:
    return SideFacts(
        netns=None if o["netns"] is None else _s(o["netns"]),
        ifname=_s(o["ifname"]),
        known=_b(o["known"]),
        present=_b(o["present"]),
        up=_b(o["up"]),
        mtu=_i(o["mtu"]),
        addresses=tuple(_s(a) for a in o["addresses"]),
        gateway=None if o["gateway"] is None else _s(o["gateway"]),
        detail=_s(o["detail"]),
    )


def _s(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {brief(v)}")
    return v


def _b(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true/false, got {brief(v)}")
    return v


def _i(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"expected an integer, got {brief(v)}")
    return v


def decode_facts(raw: bytes | str) -> NetworkFacts:
    """Total: ``InvalidRecord`` for anything that is not what ``encode_facts`` writes."""
    o = load_object(raw, "diagnostics", MAX_FACTS_BYTES)
    try:
        accepts = o["accepts"]
        observed = o["observed_at"]
        if not isinstance(observed, int | float) or isinstance(observed, bool):
            raise TypeError("observed_at must be a number")
        return NetworkFacts(
            host=_s(o["host"]),
            backend=_s(o["backend"]),
            vtep=_s(o["vtep"]),
            network=_s(o["network"]),
            vni=_i(o["vni"]),
            mtu=_i(o["mtu"]),
            bridge=_link(o["bridge"]),
            tunnel=_link(o["tunnel"]),
            forwarding={_s(k): _s(v) for k, v in dict(o["forwarding"]).items()},
            accepts=None if accepts is None else tuple(_s(v) for v in accepts),
            endpoints=tuple(
                EndpointFacts(
                    id=_s(e["id"]),
                    ip=_s(e["ip"]),
                    mac=_s(e["mac"]),
                    veth=_link(e["veth"]),
                    side=_side(e["side"]),
                    delivers=_b(e["delivers"]),
                )
                for e in o["endpoints"]
            ),
            observed_at=float(observed),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidRecord(f"diagnostics: malformed answer ({brief(str(exc))})") from None

"""What a kernel notification says about heddle's objects, and whether a remembered
observation agrees with it. Pure.

The kernel announces every change of a link, an FDB entry or a neighbour entry on rtnetlink's
multicast groups (``controller/dataplane/kernel_events.py`` listens and decodes). Each
announcement is reduced here to a *sighting*: the state one object is in now, in the terms of
``KernelState``. An agent that remembers its last observation
(``controller/dataplane/incremental.py``) compares every sighting with it: when they agree, the
change was its own apply (already folded into what it remembers) or changed nothing it reads;
when they do not, someone else changed the data plane, and the next pass must observe afresh.

Only the *last* sighting of an object counts: a veth created, enslaved and set up in one pass is
announced three times, and only the last announcement describes the state the pass left
(``last_sightings``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controller.model.kernel_state import (
    ZERO_MAC,
    FdbEntry,
    KernelState,
    LinkState,
    NeighEntry,
    PortFdbEntry,
)


@dataclass(frozen=True, slots=True)
class LinkSeen:
    """Link ``name`` is now ``link`` (``None``: deleted)."""

    name: str
    link: LinkState | None


@dataclass(frozen=True, slots=True)
class FdbSeen:
    """The VXLAN FDB entry ``entry`` of device ``dev`` is now ``present`` or not."""

    dev: str
    entry: FdbEntry
    present: bool


@dataclass(frozen=True, slots=True)
class NeighSeen:
    """The neighbour entry for ``ip`` on device ``dev`` is now ``entry`` (``None``: deleted)."""

    dev: str
    ip: str
    entry: NeighEntry | None


@dataclass(frozen=True, slots=True)
class PortFdbSeen:
    """The static entry ``entry`` of bridge ``bridge`` is now ``present`` or not."""

    bridge: str
    entry: PortFdbEntry
    present: bool


Sighting = LinkSeen | FdbSeen | NeighSeen | PortFdbSeen


def _key(s: Sighting) -> tuple[object, ...]:
    match s:
        case LinkSeen():
            return ("link", s.name)
        case FdbSeen():  # a MAC has one destination; the flood MAC one entry per destination
            return ("fdb", s.dev, s.entry.mac, s.entry.dst if s.entry.mac == ZERO_MAC else "")
        case NeighSeen():
            return ("neigh", s.dev, s.ip)
        case PortFdbSeen():
            return ("port", s.bridge, s.entry.mac)


def last_sightings(seen: Iterable[Sighting]) -> list[Sighting]:
    """The last sighting of each object, in order of their last appearance."""
    last: dict[tuple[object, ...], Sighting] = {}
    for s in seen:
        key = _key(s)
        last.pop(key, None)
        last[key] = s
    return list(last.values())


def agrees(state: KernelState, s: Sighting) -> bool:
    """Whether ``state`` already says what ``s`` says (True: nothing to learn from it)."""
    match s:
        case LinkSeen():
            return state.links.get(s.name) == s.link
        case FdbSeen():
            have_f = state.fdb.get(s.dev, frozenset())
            if s.entry.mac == ZERO_MAC or not s.present:
                return (s.entry in have_f) == s.present
            return {e for e in have_f if e.mac == s.entry.mac} == {s.entry}
        case NeighSeen():
            have = {e for e in state.neigh.get(s.dev, frozenset()) if e.ip == s.ip}
            return have == ({s.entry} if s.entry is not None else set())
        case PortFdbSeen():
            have_p = {e for e in state.port_fdb.get(s.bridge, frozenset()) if e.mac == s.entry.mac}
            # one entry per MAC in a bridge: a MAC moved away was deleted from its old port
            return have_p == {s.entry} if s.present else s.entry not in have_p

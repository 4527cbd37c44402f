"""The lab's persisted record (``<workdir>/lab.json``): everything ``down`` must undo.

Contract: the lab writes an object's name into this record *before* creating it, so a crash at
any point leaves a record that covers every object that may exist; ``down`` then deletes each
recorded object if present. Processes are recorded as ``ProcRef`` (PID + start time) so that
``down`` from another process signals exactly them. Writes are atomic (write + rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from controller.lab.nsutil import LabError, ProcRef

STATE_FILE = "lab.json"
VERSION = 1


@dataclass(frozen=True, slots=True)
class HostRecord:
    """One lab host: a network namespace with ``mgmt0`` and ``ul0`` and (maybe) an agent.

    ``backend`` is the agent's ``--backend`` (``kernel`` or ``ovs``). ``ovs_dir``: the private
    Open vSwitch instance's directory (``controller.lab.ovs``) of an ``ovs`` host, recorded
    before the instance starts so ``down`` finds its daemons by their pidfiles even after an
    ``up`` that was killed half-way; ``None`` for kernel hosts."""

    name: str
    netns: str
    vtep: str
    mgmt_ip: str
    backend: str
    agent: ProcRef | None = None
    ovs_dir: str | None = None


@dataclass(frozen=True, slots=True)
class LabRecord:
    prefix: str
    mgmt_subnet: str
    underlay_subnet: str
    bridges: tuple[str, ...] = ()
    root_links: tuple[str, ...] = ()
    netns: tuple[str, ...] = ()
    hosts: tuple[HostRecord, ...] = ()
    etcd_url: str | None = None
    etcd_keeper: ProcRef | None = None
    etcd: ProcRef | None = None
    agent_args: tuple[str, ...] = ()
    procs: tuple[ProcRef, ...] = field(default=())
    secure: bool = False  # TLS client certificates and per-host identities (lab/secure.py)

    def host(self, name: str) -> HostRecord:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"no host {name!r} in this lab (hosts: {[h.name for h in self.hosts]})")


def _ref(obj: Any) -> ProcRef | None:
    return ProcRef.from_json(obj)


def _opt_str(obj: Any) -> str | None:
    return None if obj is None else str(obj)


def _strs(obj: Any) -> tuple[str, ...]:
    return tuple(str(x) for x in obj or ())


def encode(rec: LabRecord) -> str:
    def ref(r: ProcRef | None) -> dict[str, int] | None:
        return r.to_json() if r is not None else None

    return json.dumps(
        {
            "version": VERSION,
            "prefix": rec.prefix,
            "mgmt_subnet": rec.mgmt_subnet,
            "underlay_subnet": rec.underlay_subnet,
            "bridges": list(rec.bridges),
            "root_links": list(rec.root_links),
            "netns": list(rec.netns),
            "hosts": [
                {
                    "name": h.name,
                    "netns": h.netns,
                    "vtep": h.vtep,
                    "mgmt_ip": h.mgmt_ip,
                    "backend": h.backend,
                    "agent": ref(h.agent),
                    "ovs_dir": h.ovs_dir,
                }
                for h in rec.hosts
            ],
            "etcd_url": rec.etcd_url,
            "etcd_keeper": ref(rec.etcd_keeper),
            "etcd": ref(rec.etcd),
            "agent_args": list(rec.agent_args),
            "procs": [p.to_json() for p in rec.procs],
            "secure": rec.secure,
        },
        indent=2,
    )


def decode(text: str) -> LabRecord:
    try:
        o = json.loads(text)
        if not isinstance(o, dict) or o.get("version") != VERSION:
            raise ValueError("not a heddle lab record (version mismatch)")
        return LabRecord(
            prefix=str(o["prefix"]),
            mgmt_subnet=str(o["mgmt_subnet"]),
            underlay_subnet=str(o["underlay_subnet"]),
            bridges=_strs(o.get("bridges")),
            root_links=_strs(o.get("root_links")),
            netns=_strs(o.get("netns")),
            hosts=tuple(
                HostRecord(
                    str(h["name"]),
                    str(h["netns"]),
                    str(h["vtep"]),
                    str(h["mgmt_ip"]),
                    str(h["backend"]),
                    _ref(h.get("agent")),
                    _opt_str(h.get("ovs_dir")),
                )
                for h in o.get("hosts") or ()
            ),
            etcd_url=o.get("etcd_url"),
            etcd_keeper=_ref(o.get("etcd_keeper")),
            etcd=_ref(o.get("etcd")),
            agent_args=_strs(o.get("agent_args")),
            procs=tuple(r for r in (_ref(p) for p in o.get("procs") or ()) if r is not None),
            secure=o.get("secure") is True,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise LabError(f"unreadable lab record: {exc}") from None


def load(workdir: Path) -> LabRecord | None:
    """The record in ``workdir``, or None if there is none."""
    try:
        text = (workdir / STATE_FILE).read_text()
    except FileNotFoundError:
        return None
    return decode(text)


def save(workdir: Path, rec: LabRecord) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / (STATE_FILE + ".tmp")
    tmp.write_text(encode(rec))
    os.replace(tmp, workdir / STATE_FILE)


class LabBook:
    """The record of the lab in ``workdir``, read fresh from disk on every call (several
    processes may hold one lab) and written back whole. Each ``add_*`` is what the lab calls
    *before* creating that object (the module docstring's contract). Not thread-safe."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def load(self) -> LabRecord | None:
        return load(self.workdir)

    @property
    def record(self) -> LabRecord:
        """The record; raises ``LabError`` when no lab is up in ``workdir``."""
        rec = load(self.workdir)
        if rec is None:
            raise LabError(f"no lab is up (no record in {self.workdir}); run `heddle lab up`")
        return rec

    def save(self, rec: LabRecord) -> LabRecord:
        save(self.workdir, rec)
        return rec

    def add_link(self, name: str, bridge: bool = False) -> None:
        """A root-namespace link (``bridge``: one of the lab's bridges, deleted last)."""
        rec = self.record
        if bridge:
            self.save(replace(rec, bridges=(*rec.bridges, name)))
        else:
            self.save(replace(rec, root_links=(*rec.root_links, name)))

    def add_netns(self, name: str) -> None:
        rec = self.record
        if name not in rec.netns:
            self.save(replace(rec, netns=(*rec.netns, name)))

    def drop_netns(self, name: str) -> None:
        """Forget namespace ``name`` (after it was deleted)."""
        rec = self.record
        self.save(replace(rec, netns=tuple(n for n in rec.netns if n != name)))

    def add_host(self, host: HostRecord) -> None:
        rec = self.record
        self.save(replace(rec, hosts=(*rec.hosts, host)))

    def set_host(self, name: str, **changes: Any) -> None:
        """Replace fields of host ``name``'s record (``agent``, ``ovs_dir``)."""
        rec = self.record
        hosts = tuple(replace(h, **changes) if h.name == name else h for h in rec.hosts)
        self.save(replace(rec, hosts=hosts))

    def add_proc(self, ref: ProcRef) -> None:
        """A helper process ``down`` stops if it still runs."""
        rec = self.record
        self.save(replace(rec, procs=(*rec.procs, ref)))

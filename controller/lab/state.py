"""The lab's persisted record (``<workdir>/lab.json``): everything ``down`` must undo.

Contract: the lab writes an object's name into this record *before* creating it, so a crash at
any point leaves a record that covers every object that may exist; ``down`` then deletes each
recorded object if present. Processes are recorded as ``ProcRef`` (PID + start time) so that
``down`` from another process signals exactly them. Writes are atomic (write + rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
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

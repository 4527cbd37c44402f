"""``EntryWriter``: the kernel backend's FDB, neighbour and static bridge entries
(``PutFdb``, ``AddFlood``, ``DelFdb``, ``PutNeigh``, ``DelNeigh``, ``PutPortFdb``,
``DelPortFdb``), either many in one raw netlink buffer (``write``) or one pyroute2 request each
(``write_one_pyroute2``, the driver's ``fast_netlink=False``), with the same semantics.

Idempotent: puts replace, an append of a flood entry that exists and a delete of an entry (or
on a device) that is gone succeed. Explicit ``state`` and ``NTF_SELF`` on replace (K4).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from pyroute2 import NetlinkError

from controller.dataplane.backend import OpFailed
from controller.dataplane.kernel_host import HostSockets
from controller.dataplane.pyroute2_msgs import code
from controller.dataplane.rtnetlink import (
    NTF_MASTER,
    NTF_SELF,
    NUD_NOARP,
    NUD_PERMANENT,
    entry_request,
    ip_family,
)
from controller.plan.kernel_ops import (
    ZERO_MAC,
    AddFlood,
    DelFdb,
    DelNeigh,
    DelPortFdb,
    KernelOp,
    PutFdb,
    PutNeigh,
    PutPortFdb,
)

ENTRY_OPS = (PutFdb, AddFlood, DelFdb, PutNeigh, DelNeigh, PutPortFdb, DelPortFdb)
_PORT_OPS = (PutPortFdb, DelPortFdb)
_DELETES = (DelFdb, DelNeigh, DelPortFdb)
_TOLERATED: dict[type, frozenset[int]] = {
    AddFlood: frozenset({errno.EEXIST}),
    DelFdb: frozenset({errno.ENOENT}),
    DelNeigh: frozenset({errno.ENOENT}),
    DelPortFdb: frozenset({errno.ENOENT}),
}


class EntryWriter:
    """Writes entry ops through ``sockets`` (see the module docstring)."""

    def __init__(self, sockets: HostSockets) -> None:
        self._s = sockets

    def index_of(self, op: KernelOp) -> int | None:
        """Ifindex of the device an entry op writes to (``None``: gone, for a delete)."""
        assert isinstance(op, ENTRY_OPS)
        missing_ok = isinstance(op, _DELETES)
        if isinstance(op, _PORT_OPS):
            return self._s.port_index(op.dev, missing_ok)
        return self._s.vx_index(op.dev, missing_ok)

    def write(self, ops: Sequence[KernelOp]) -> list[str | None]:
        """Entry ops in one raw netlink buffer; one failure reason (or None) per op."""
        results: list[str | None] = [None] * len(ops)
        sent: list[int] = []
        msgs: list[tuple[int, int, bytes]] = []
        devs: list[str] = []
        for i, op in enumerate(ops):
            if not isinstance(op, ENTRY_OPS):
                raise TypeError(f"not an entry op: {op!r}")
            devs.append(op.dev)
            try:
                idx = self.index_of(op)
            except OpFailed as exc:
                results[i] = exc.reason
                continue
            except NetlinkError as exc:
                results[i] = f"netlink: {os.strerror(code(exc))}"
                continue
            if idx is not None:
                sent.append(i)
                msgs.append(entry_request(op, idx))
        if not msgs:
            return results
        try:
            codes = self._s.rtnl().write(msgs)
        except OSError as exc:  # e.g. ENOBUFS: results unknown; the next pass re-plans
            self._s.index.clear()
            self._s.drop_raw()  # it may still hold late ACKs
            for i in sent:
                results[i] = f"no answer from the kernel: {exc}"
            return results
        for i, got in zip(sent, codes, strict=True):
            if got and got not in _TOLERATED.get(type(ops[i]), frozenset()):
                results[i] = f"netlink: {os.strerror(got)}"
                self._s.index.pop(devs[i], None)
        return results

    def write_one_pyroute2(self, op: KernelOp) -> None:
        """One entry op as one pyroute2 request. Raises ``OpFailed`` / ``NetlinkError``."""
        ipr = self._s.host()
        idx = self.index_of(op)
        if idx is None:
            return
        try:
            match op:
                case PutFdb():
                    ipr.fdb("replace", ifindex=idx, lladdr=op.mac, dst=op.dst,
                            state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)  # fmt: skip
                case AddFlood():
                    ipr.fdb("append", ifindex=idx, lladdr=ZERO_MAC, dst=op.dst)
                case DelFdb():
                    ipr.fdb("del", ifindex=idx, lladdr=op.mac, dst=op.dst)
                case PutNeigh():
                    ipr.neigh("replace", ifindex=idx, dst=op.ip, lladdr=op.mac, state=NUD_PERMANENT,
                              family=ip_family(op.ip))  # fmt: skip
                case DelNeigh():
                    ipr.neigh("del", ifindex=idx, dst=op.ip, family=ip_family(op.ip))
                case PutPortFdb():
                    ipr.fdb("replace", ifindex=idx, lladdr=op.mac, state=NUD_NOARP,
                            flags=NTF_MASTER)  # fmt: skip
                case DelPortFdb():
                    ipr.fdb("del", ifindex=idx, lladdr=op.mac, flags=NTF_MASTER)
                case _:
                    raise TypeError(f"not an entry op: {op!r}")
        except NetlinkError as exc:
            if code(exc) not in _TOLERATED.get(type(op), frozenset()):
                raise

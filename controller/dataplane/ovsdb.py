"""OVSDB through the ``ovs`` Python IDL (no ``ovs-vsctl``): observe heddle's rows, write them.

One IDL connection per instance (opened on first use, the schema fetched from the server, only
the columns heddle reads or writes replicated). It reconnects by itself; ``observe`` and every
write first bring the replica up to date and fail with ``OvsdbError`` when the server cannot be
reached within ``timeout``.

Writes are one transaction each, with the contract of ``ovs-vsctl``'s default mode: a change
that ovs-vswitchd must act on also increments ``Open_vSwitch:next_cfg``, and the write returns
only once ovs-vswitchd has applied it (``cur_cfg`` caught up); then a port's interface must have
the OpenFlow port it asked for, or the write fails with the interface's ``error`` (ofport -1)
or the number it got instead. "Waited too long" names ovs-vswitchd as the likely cause. An
endpoint's port (``EnsureOvsPort.wait`` false) is only sent; ``await_port`` takes OVSDB's
answer (sending it again, waited for, if the connection dropped meanwhile), waits for
ovs-vswitchd and checks the number, so the agent writes the endpoint's side and flows while
OVSDB commits and ovs-vswitchd adds the port.

Ownership: rows heddle creates carry ``external_ids:heddle-owner=heddle``; writes refuse rows
without it (never adopted, never deleted). Only heddle's keys of ``external_ids`` and
``other_config`` are written; other keys on the same rows are left as they are.

Not thread-safe: one reconciler thread per instance.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream

from controller.dataplane.ovsdb_rows import PortReader, opt, owned
from controller.model.errors import HeddleError
from controller.model.ovs_state import OvsdbState
from controller.plan.ovs_ops import (
    ENDPOINT_KEY,
    FLOW_RESTORE_WAIT,
    NETWORK_KEY,
    OWNER_KEY,
    OWNER_VALUE,
    RESTORE_KEY,
    AwaitOvsPort,
    EnsureOvsBridge,
    EnsureOvsPort,
)

Row = Any  # ovs.db.idl.Row: untyped library
Txn = Any  # ovs.db.idl.Transaction

_COLUMNS: dict[str, list[str]] = {
    "Open_vSwitch": ["bridges", "other_config", "next_cfg", "cur_cfg"],
    "Bridge": ["name", "ports", "datapath_type", "fail_mode", "other_config", "external_ids"],
    "Port": ["name", "interfaces", "external_ids"],
    "Interface": [
        "name", "type", "options", "ofport", "ofport_request", "external_ids", "error",
    ],
}  # fmt: skip
_TXN = ovs.db.idl.Transaction


class OvsdbError(HeddleError):
    """The database (or ovs-vswitchd behind it) did not do what was asked; the message says what."""


class Ovsdb:
    """The OVSDB side of the ovs backend, on remote ``remote`` (e.g. ``unix:/run/ovs/db.sock``).

    Raises nothing at construction. Every method raises ``OvsdbError`` on failure."""

    def __init__(self, remote: str, timeout: float = 10.0) -> None:
        self.remote = remote
        self.timeout = timeout
        self._idl: Any = None
        self._written_cfg = 0  # the highest next_cfg a write of ours set (``await_port``)
        self._sent: dict[str, tuple[EnsureOvsPort, Txn]] = {}  # port writes not answered yet
        # (the IDL's change_seqno, the names asked, what observe returned) of the last observe
        self._seen: tuple[int, frozenset[str], OvsdbState] | None = None
        # each port converted once per change of its rows (controller/dataplane/ovsdb_rows.py)
        self._rows = PortReader()

    # -- connection ---------------------------------------------------------------------------

    def _fetch_schema(self) -> Any:
        error, strm = ovs.stream.Stream.open_block(
            ovs.stream.Stream.open(self.remote), int(self.timeout * 1000)
        )
        if error:
            raise OvsdbError(f"cannot connect to OVSDB {self.remote}: {_strerror(error)}")
        rpc = ovs.jsonrpc.Connection(strm)
        try:
            req = ovs.jsonrpc.Message.create_request("get_schema", ["Open_vSwitch"])
            error, reply = rpc.transact_block(req)
        finally:
            rpc.close()
        if error or reply is None or reply.error is not None:
            why = _strerror(error) if error else getattr(reply, "error", "no reply")
            raise OvsdbError(f"cannot read the Open_vSwitch schema from {self.remote}: {why}")
        return reply.result

    def _sync(self) -> Any:
        """The IDL, connected and with a replica at least as new as the last update the server
        sent. Raises ``OvsdbError`` if that takes longer than ``timeout``."""
        if self._idl is None:
            self._seen = None  # a new replica counts its changes from scratch
            self._rows.clear()
            helper = ovs.db.idl.SchemaHelper(schema_json=self._fetch_schema())
            for table, columns in _COLUMNS.items():
                helper.register_columns(table, columns)
            self._idl = ovs.db.idl.Idl(self.remote, helper)
        idl = self._idl
        deadline = time.monotonic() + self.timeout
        while True:
            for _ in range(100):  # drain what has arrived
                if not idl.run():
                    break
            if idl.state == idl.IDL_S_MONITORING and idl._session.is_connected():
                return idl
            if time.monotonic() > deadline:
                raise OvsdbError(f"OVSDB {self.remote} unreachable for {self.timeout}s")
            self._block(idl, deadline)

    @staticmethod
    def _block(idl: Any, deadline: float, txn: Txn | None = None) -> None:
        poller = ovs.poller.Poller()
        idl.wait(poller)
        if txn is not None:
            txn.wait(poller)
        poller.timer_wait(max(1, min(100, int((deadline - time.monotonic()) * 1000))))
        poller.block()

    def close(self) -> None:
        """Drop the connection. Idempotent; the next call reconnects."""
        if self._idl is not None:
            self._idl.close()
            self._idl = None
        self._seen = None
        self._sent.clear()  # their answers would come on the closed connection

    # -- reading ------------------------------------------------------------------------------

    def _root(self, idl: Any) -> Row:
        rows = list(idl.tables["Open_vSwitch"].rows.values())
        if not rows:
            raise OvsdbError(f"OVSDB {self.remote} has no Open_vSwitch row (run ovs-vsctl init)")
        return rows[0]

    @staticmethod
    def _bridge(idl: Any, name: str) -> Row | None:
        for row in idl.tables["Bridge"].rows.values():
            if row.name == name:
                return row
        return None

    @staticmethod
    def _port_and_bridge(idl: Any, name: str) -> tuple[Row | None, Row | None]:
        for br in idl.tables["Bridge"].rows.values():
            for port in br.ports:
                if port.name == name:
                    return port, br
        for port in idl.tables["Port"].rows.values():
            if port.name == name:
                return port, None
        return None, None

    def observe(self, names: Iterable[str]) -> OvsdbState:
        """The bridges called ``names`` and every owned bridge, with their ports. Built from
        the IDL only when it changed since the last call (``change_seqno``: the IDL counts
        every change OVSDB notified, ours included), so asking again is cheap."""
        idl = self._sync()
        wanted = frozenset(names)
        seen = self._seen
        if seen is not None and seen[0] == idl.change_seqno and seen[1] == wanted:
            return seen[2]
        state = self._observe(idl, wanted)
        self._seen = (idl.change_seqno, wanted, state)
        return state

    def _observe(self, idl: Any, wanted: frozenset[str]) -> OvsdbState:
        root = self._root(idl)
        bridges = self._rows.bridges(idl.tables, lambda row: row.name in wanted or owned(row))
        frw = dict(root.other_config).get(FLOW_RESTORE_WAIT) == "true"
        return OvsdbState(bridges=bridges, flow_restore_wait=frw)

    # -- writing ------------------------------------------------------------------------------

    def _transact(
        self, what: str, build: Callable[[Any, Txn, Row], None], wait: bool
    ) -> tuple[Any, Row]:
        """Run ``build(idl, txn, root)`` as one transaction (retried on a verify conflict);
        with ``wait``, return only once ovs-vswitchd has applied it."""
        for _ in range(5):
            idl, root, txn = self._begin(what, build, count=wait)
            status = self._answer(idl, txn, what, counted=wait)
            if status == _TXN.TRY_AGAIN:
                continue
            if status == _TXN.UNCHANGED:
                return idl, root
            if wait:
                self._wait_applied(idl, root, txn.get_increment_new_value(), what)
            return idl, root
        raise OvsdbError(f"{what}: the database kept changing under the transaction")

    def _begin(
        self, what: str, build: Callable[[Any, Txn, Row], None], count: bool
    ) -> tuple[Any, Row, Txn]:
        """A transaction built by ``build`` and sent (``commit`` once: the answer is not
        waited for); with ``count``, it increments ``next_cfg`` (a change ovs-vswitchd acts
        on). A ``build`` that raises leaves no transaction open."""
        idl = self._sync()
        root = self._root(idl)
        txn = ovs.db.idl.Transaction(idl)
        txn.add_comment(f"heddle: {what}")
        try:
            build(idl, txn, root)
        except BaseException:
            txn.abort()
            raise
        if count:
            root.increment("next_cfg")
        txn.commit()
        return idl, root, txn

    def _answer(self, idl: Any, txn: Txn, what: str, counted: bool) -> str:
        """Run the IDL until OVSDB answered ``txn`` (sent by ``_begin``, ``counted`` as there);
        its status, one of SUCCESS, UNCHANGED and TRY_AGAIN (build and send it again). Raises
        ``OvsdbError`` for a failed transaction and when OVSDB does not answer in ``timeout``."""
        deadline = time.monotonic() + self.timeout
        while True:
            status = txn.commit()  # the status the IDL recorded once it has been sent
            if status != _TXN.INCOMPLETE:
                break
            if time.monotonic() > deadline:
                txn.abort()
                raise OvsdbError(f"{what}: OVSDB {self.remote} did not answer in time")
            idl.run()
            self._block(idl, deadline, txn)
        if status not in (_TXN.SUCCESS, _TXN.UNCHANGED, _TXN.TRY_AGAIN):
            err = txn.get_error() or _TXN.status_to_string(status)
            raise OvsdbError(f"{what}: transaction failed: {err}")
        if status == _TXN.SUCCESS and counted:
            self._written_cfg = max(self._written_cfg, txn.get_increment_new_value())
        return str(status)

    def _wait_applied(self, idl: Any, root: Row, next_cfg: int, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            idl.run()
            cur = opt(self._root(idl).cur_cfg) or 0
            if cur >= next_cfg:
                return
            if time.monotonic() > deadline:
                raise OvsdbError(
                    f"{what}: ovs-vswitchd did not apply the change within {self.timeout}s "
                    f"(cur_cfg {cur} < {next_cfg}); is ovs-vswitchd running?"
                )
            self._block(idl, deadline)

    def ensure_bridge(self, op: EnsureOvsBridge) -> None:
        """Create or converge bridge ``op.name``; refuse a bridge heddle does not own."""

        def build(idl: Any, txn: Txn, root: Row) -> None:
            br = self._bridge(idl, op.name)
            if br is None:
                iface = txn.insert(idl.tables["Interface"])
                iface.name = op.name
                iface.type = "internal"
                port = txn.insert(idl.tables["Port"])
                port.name = op.name
                port.interfaces = [iface]
                br = txn.insert(idl.tables["Bridge"])
                br.name = op.name
                br.ports = [port]
                br.external_ids = {OWNER_KEY: OWNER_VALUE}
                br.datapath_type = op.datapath_type
                br.fail_mode = ["secure"]
                br.other_config = {"hwaddr": op.hwaddr} if op.hwaddr else {}
                root.addvalue("bridges", br)
                return
            if not owned(br):
                raise OvsdbError(f"bridge {op.name} exists and is not owned by heddle")
            if br.datapath_type != op.datapath_type:
                br.datapath_type = op.datapath_type
            if opt(br.fail_mode) != "secure":
                br.fail_mode = ["secure"]
            if dict(br.other_config).get("hwaddr") != op.hwaddr:
                if op.hwaddr is None:
                    br.delkey("other_config", "hwaddr")
                else:
                    br.setkey("other_config", "hwaddr", op.hwaddr)

        self._transact(str(op), build, wait=True)

    def del_bridge(self, name: str) -> None:
        """Delete owned bridge ``name`` (its ports go with it). Absent is success."""

        def build(idl: Any, txn: Txn, root: Row) -> None:
            br = self._bridge(idl, name)
            if br is None:
                return
            if not owned(br):
                raise OvsdbError(f"bridge {name} is not owned by heddle; refusing to delete it")
            root.delvalue("bridges", br)

        self._transact(f"delete bridge {name}", build, wait=True)

    def ensure_port(self, op: EnsureOvsPort) -> None:
        """Create or converge port ``op.name`` on ``op.bridge``. With ``op.wait``, wait for
        ovs-vswitchd and check the ofport; without, return once the write is sent
        (``await_port`` takes OVSDB's answer, waits and checks)."""

        def build(idl: Any, txn: Txn, root: Row) -> None:
            br = self._bridge(idl, op.bridge)
            if br is None or not owned(br):
                raise OvsdbError(f"bridge {op.bridge} is missing or not owned by heddle")
            port, on = self._port_and_bridge(idl, op.name)
            if port is not None and not owned(port):
                raise OvsdbError(f"port {op.name} exists and is not owned by heddle")
            ids = {OWNER_KEY: OWNER_VALUE}
            if op.network is not None and op.endpoint is not None:
                ids.update({NETWORK_KEY: op.network, ENDPOINT_KEY: op.endpoint})
            if port is not None and on is not None and on.uuid != br.uuid:
                on.delvalue("ports", port)  # on another of our bridges: move it
                port = None
            if port is None or not port.interfaces:
                iface = txn.insert(idl.tables["Interface"])
                iface.name = op.name
                iface.type = op.type
                iface.options = dict(op.options)
                iface.ofport_request = [op.ofport]
                iface.external_ids = ids
                port = txn.insert(idl.tables["Port"])
                port.name = op.name
                port.interfaces = [iface]
                port.external_ids = ids
                br.addvalue("ports", port)
                return
            iface = port.interfaces[0]
            _set_keys(port, "external_ids", ids)
            _set_keys(iface, "external_ids", ids)
            if iface.type != op.type:
                iface.type = op.type
            if dict(iface.options) != dict(op.options):
                iface.options = dict(op.options)
            if opt(iface.ofport_request) != op.ofport:
                iface.ofport_request = [op.ofport]

        if op.wait:
            idl, _ = self._transact(str(op), build, wait=True)
            self._check_port(idl, op.name, op.ofport)
        else:
            self._sent[op.name] = (op, self._begin(str(op), build, count=True)[2])

    def await_port(self, op: AwaitOvsPort) -> None:
        """Wait for OVSDB's answer to port ``op.name``'s write (when ``ensure_port`` sent one
        without waiting), then until ovs-vswitchd has applied every write made so far, then
        check that the port has ofport ``op.ofport`` (see ``ensure_port``)."""
        sent = self._sent.pop(op.name, None)
        if sent is not None:
            want, txn = sent
            if self._answer(self._sync(), txn, str(want), counted=True) == _TXN.TRY_AGAIN:
                self.ensure_port(replace(want, wait=True))  # sent again, and waited for
                return
        idl = self._sync()
        root = self._root(idl)
        # A database replaced since (next_cfg counts from scratch) must not be waited on for ever
        target = min(self._written_cfg, opt(root.next_cfg) or 0)
        self._wait_applied(idl, root, target, str(op))
        self._check_port(idl, op.name, op.ofport)

    def _check_port(self, idl: Any, name: str, want: int) -> None:
        port, _on = self._port_and_bridge(idl, name)
        if port is None or not port.interfaces:
            raise OvsdbError(f"port {name} vanished right after it was written")
        iface = port.interfaces[0]
        ofport = opt(iface.ofport)
        if ofport == -1 or ofport is None:
            why = opt(iface.error) or "no error reported"
            raise OvsdbError(f"interface {name} has ofport {ofport}: {why}")
        if ofport != want:
            raise OvsdbError(
                f"interface {name} got ofport {ofport}, not the requested {want} "
                "(another interface holds it)"
            )

    def del_port(self, bridge: str, name: str) -> None:
        """Remove owned port ``name`` from ``bridge``. Absent is success."""

        def build(idl: Any, txn: Txn, root: Row) -> None:
            port, on = self._port_and_bridge(idl, name)
            if port is None or on is None:
                return
            if not owned(port):
                raise OvsdbError(f"port {name} is not owned by heddle; refusing to delete it")
            on.delvalue("ports", port)

        self._transact(f"delete port {bridge}/{name}", build, wait=True)

    def set_flow_restore_wait(self, value: bool, wait: bool = False) -> None:
        """``Open_vSwitch:other_config:flow-restore-wait`` = ``value``; with ``wait``, return
        once ovs-vswitchd has seen it."""

        def build(idl: Any, txn: Txn, root: Row) -> None:
            root.setkey("other_config", FLOW_RESTORE_WAIT, "true" if value else "false")

        self._transact(f"flow-restore-wait={str(value).lower()}", build, wait=wait)

    def set_restore_marker(self, bridge: str, pending: bool) -> None:
        """Set or clear ``external_ids:heddle-flow-restore`` on owned bridge ``bridge``."""

        def build(idl: Any, txn: Txn, root: Row) -> None:
            br = self._bridge(idl, bridge)
            if br is None or not owned(br):
                raise OvsdbError(f"bridge {bridge} is missing or not owned by heddle")
            if pending:
                br.setkey("external_ids", RESTORE_KEY, "pending")
            elif RESTORE_KEY in dict(br.external_ids):
                br.delkey("external_ids", RESTORE_KEY)

        self._transact(f"restore marker on {bridge}={pending}", build, wait=False)


def _set_keys(row: Row, column: str, values: Mapping[str, str]) -> None:
    """Write only the keys of ``values`` that differ (mutations: other keys stay)."""
    have = dict(getattr(row, column))
    for k, v in values.items():
        if have.get(k) != v:
            row.setkey(column, k, v)


def _strerror(error: int) -> str:
    return os.strerror(error) if isinstance(error, int) and error > 0 else str(error)

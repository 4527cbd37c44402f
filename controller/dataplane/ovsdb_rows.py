"""Reading the OVSDB replica (the ``ovs`` Python IDL's rows) into ``BridgeState``: only the
ports whose replicated values changed since the last read are converted again.

Why: every OVSDB change -- a new endpoint's port, ovs-vswitchd's answer with its ofport --
makes the next ``observe`` build the bridge anew, and the IDL's attribute access converts every
value on every read (about 0.1 ms per port: 5.7 ms for a bridge of 60 endpoint ports on this
machine). That read sits at the start of a new local endpoint's pass, on the path to its first
packet.

How a row is known to be unchanged: the IDL never modifies a replicated value in place -- an
update from the server replaces the column's ``Datum`` in the row's ``_data`` (see
``ovs/db/idl.py``: ``__apply_diff``, ``__row_update``) -- so a port whose own values and whose
interfaces' values are the very objects seen last time converts to the same ``PortState``.
The cache holds those objects, so none of them can be freed and its identity reused. A row
with uncommitted changes of a transaction of ours in flight (its values then come from the
transaction) is converted and not cached.

Not thread-safe (the reconciler thread's, like ``Ovsdb``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.model.ovs_state import BridgeState, PortState
from controller.plan.ovs_ops import ENDPOINT_KEY, NETWORK_KEY, OWNER_KEY, OWNER_VALUE, RESTORE_KEY

Row = Any  # ovs.db.idl.Row: untyped library

PORT_COLUMNS = ("name", "interfaces", "external_ids")
INTERFACE_COLUMNS = ("name", "type", "options", "ofport", "ofport_request", "external_ids", "error")


def opt(value: Any) -> Any:
    """An optional column's value (the IDL gives a 0- or 1-element list) or ``None``."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def owned(row: Row) -> bool:
    """Whether ``row`` carries heddle's owner marker in ``external_ids``."""
    return bool(dict(row.external_ids).get(OWNER_KEY) == OWNER_VALUE)


@dataclass(frozen=True, slots=True)
class _Port:
    """What one port row contributes to its bridge: its ``PortState`` (``None`` for the
    bridge's own port or a port without interfaces) and the OpenFlow numbers its interfaces
    hold or ask for."""

    state: PortState | None
    ofports: frozenset[int]


def _convert(port: Row, bridge_name: str) -> _Port:
    ifaces = list(port.interfaces)
    used = {
        n
        for iface in ifaces
        for n in (opt(iface.ofport), opt(iface.ofport_request))
        if isinstance(n, int) and n > 0
    }
    if port.name == bridge_name or not ifaces:
        return _Port(None, frozenset(used))
    iface = ifaces[0]
    ids = dict(port.external_ids)
    state = PortState(
        name=port.name,
        owned=ids.get(OWNER_KEY) == OWNER_VALUE,
        type=iface.type,
        options=tuple(sorted(dict(iface.options).items())),
        ofport_request=opt(iface.ofport_request),
        ofport=opt(iface.ofport),
        error=opt(iface.error),
        network=ids.get(NETWORK_KEY),
        endpoint=ids.get(ENDPOINT_KEY),
    )
    return _Port(state, frozenset(used))


def _refs(row: Row, column: str, rows: Any) -> list[Row]:
    """The rows a reference column of ``row`` names, straight from the replicated value
    when ``row`` is settled (the IDL's attribute access would also sort them)."""
    if not _settled(row):
        return list(getattr(row, column))
    datum = row.__dict__["_data"].get(column)
    found = (rows.get(uuid) for uuid in (datum.as_list() if datum is not None else ()))
    return [r for r in found if r is not None]


def _settled(row: Row) -> bool:
    """No transaction of ours has changed ``row`` without it being committed yet."""
    d = row.__dict__
    return d.get("_data") is not None and not d.get("_changes") and not d.get("_mutations")


class PortReader:
    """Converts bridges' rows to ``BridgeState``, remembering each port's conversion with the
    value objects it came from (see the module docstring). ``bridges`` is equivalent to
    converting every row afresh; it raises nothing the IDL's attribute access would not."""

    def __init__(self) -> None:
        self._ports: dict[Any, tuple[tuple[Any, ...], _Port]] = {}
        self.converted = 0  # ports converted afresh (for tests: the rest came from the cache)

    def _key(self, port: Row, interfaces: Any) -> tuple[Any, ...] | None:
        """The objects ``port``'s conversion depends on, or ``None`` when a row involved has
        uncommitted changes (then it is not cached)."""
        if not _settled(port):
            return None
        data = port.__dict__["_data"]
        key: list[Any] = [port, *(data.get(c) for c in PORT_COLUMNS)]
        ids = data.get("interfaces")
        for uuid in ids.as_list() if ids is not None else ():
            iface = interfaces.get(uuid)
            if iface is None or not _settled(iface):
                return None
            idata = iface.__dict__["_data"]
            key += [iface, *(idata.get(c) for c in INTERFACE_COLUMNS)]
        return tuple(key)

    def _port(self, port: Row, bridge_name: str, interfaces: Any) -> _Port:
        key = self._key(port, interfaces)
        hit = self._ports.get(port.uuid) if key is not None else None
        if (
            hit is not None
            and key is not None
            and len(hit[0]) == len(key)
            and all(a is b for a, b in zip(hit[0], key, strict=True))
        ):
            return hit[1]
        self.converted += 1
        got = _convert(port, bridge_name)
        if key is not None:
            self._ports[port.uuid] = (key, got)
        else:
            self._ports.pop(port.uuid, None)
        return got

    def bridges(self, tables: Any, wanted: Callable[[Row], bool]) -> dict[str, BridgeState]:
        """The bridges ``wanted`` accepts, by name, with their ports (``tables``: the IDL's
        ``idl.tables``); what is remembered of ports no longer on them is dropped."""
        interfaces, port_rows = tables["Interface"].rows, tables["Port"].rows
        out: dict[str, BridgeState] = {}
        seen: set[Any] = set()
        for row in tables["Bridge"].rows.values():
            if not wanted(row):
                continue
            name = row.name
            ports: dict[str, PortState] = {}
            used: set[int] = set()
            for port in _refs(row, "ports", port_rows):
                seen.add(port.uuid)
                got = self._port(port, name, interfaces)
                used |= got.ofports
                if got.state is not None:
                    ports[got.state.name] = got.state
            ids = dict(row.external_ids)
            out[name] = BridgeState(
                name=name,
                owned=ids.get(OWNER_KEY) == OWNER_VALUE,
                datapath_type=row.datapath_type,
                fail_mode=opt(row.fail_mode),
                hwaddr=dict(row.other_config).get("hwaddr"),
                restore_pending=ids.get(RESTORE_KEY) == "pending",
                ports=ports,
                used_ofports=frozenset(used),
            )
        for uuid in [u for u in self._ports if u not in seen]:
            del self._ports[uuid]
        return out

    def clear(self) -> None:
        """Forget everything (a new IDL: none of its rows was seen)."""
        self._ports.clear()

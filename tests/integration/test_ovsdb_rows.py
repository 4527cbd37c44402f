"""``Ovsdb.observe`` converts only the ports whose rows changed
(controller/dataplane/ovsdb_rows.py), against a private Open vSwitch in a throw-away
namespace: after every kind of change a real OVSDB makes -- another client's writes,
ovs-vswitchd's own, ours sent but not yet committed -- what it reports equals a conversion of
every row afresh, and it converted only what changed.

The fixture stops OVS by PID and deletes the namespace even on failure.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyroute2 import netns

from controller.dataplane.ovsdb import Ovsdb, OvsdbError
from controller.dataplane.ovsdb_rows import PortReader, owned
from controller.lab import ovs as lab_ovs
from controller.model.ovs_state import OvsdbState
from controller.plan.ovs_ops import AwaitOvsPort, EnsureOvsBridge, EnsureOvsPort

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and OVS daemons"),
    pytest.mark.skipif(
        shutil.which("ovs-vswitchd") is None, reason="apt-get install openvswitch-switch"
    ),
]

BRIDGE = "br-rows"


@pytest.fixture
def ovs() -> Iterator[lab_ovs.OvsInstance]:
    name = f"hdr-{uuid.uuid4().hex[:6]}"
    workdir = Path(f"/tmp/{name}")
    netns.create(name)
    inst: lab_ovs.OvsInstance | None = None
    try:
        inst = lab_ovs.start(name, workdir)
        yield inst
    finally:
        if inst is not None:
            inst.stop(remove_workdir=True)
        shutil.rmtree(workdir, ignore_errors=True)
        netns.remove(name)


def afresh(db: Ovsdb) -> dict[str, object]:
    """The bridges observe would report with nothing remembered: every row of the replica
    converted again, as the last observe left the replica (no sync: ``ovs-vswitchd`` may
    answer at any moment, and a sync in between could read a newer replica)."""
    return dict(PortReader().bridges(db._idl.tables, lambda row: row.name == BRIDGE or owned(row)))


def settle(db: Ovsdb, done: Callable[[OvsdbState], bool], timeout: float = 10.0) -> OvsdbState:
    """Observe until ``done`` holds (another client's write reaches the replica a little
    later), then check the observation against a conversion afresh."""
    deadline = time.monotonic() + timeout
    while True:
        state = db.observe([BRIDGE])
        if done(state):
            assert state.bridges == afresh(db)
            return state
        assert time.monotonic() < deadline, f"replica never showed the change: {state}"
        time.sleep(0.02)


def ports(state: OvsdbState) -> dict[str, object]:
    br = state.bridges.get(BRIDGE)
    return dict(br.ports) if br is not None else {}


def test_observe_converts_only_changed_ports_and_equals_a_fresh_read(
    ovs: lab_ovs.OvsInstance,
) -> None:
    db = Ovsdb(ovs.db_url)
    try:
        db.ensure_bridge(EnsureOvsBridge(BRIDGE, "netdev"))
        for k in range(1, 9):  # no device: ovs-vswitchd writes ofport -1 and an error
            ovs.vsctl("--no-wait", "add-port", BRIDGE, f"p{k}", "--", "set", "interface",
                      f"p{k}", f"ofport_request={k + 10}")  # fmt: skip
        state = settle(db, lambda s: len(ports(s)) == 8 and all(
            p.error for p in ports(s).values()))  # fmt: skip
        assert ports(state)["p3"].ofport_request == 13

        before = db._rows.converted
        settle(db, lambda s: len(ports(s)) == 8)
        assert db._rows.converted == before, "an unchanged replica converted rows again"

        ovs.vsctl("--no-wait", "set", "port", "p2", "external_ids:heddle-network=blue")
        settle(db, lambda s: ports(s)["p2"].network == "blue")
        assert db._rows.converted == before + 1, "only the changed port is converted again"

        before = db._rows.converted
        ovs.vsctl("--no-wait", "set", "interface", "p5", "options:key=flow")
        settle(db, lambda s: dict(ports(s)["p5"].options).get("key") == "flow")
        assert db._rows.converted == before + 1

        ovs.vsctl("--no-wait", "set", "interface", "p6", "ofport_request=60")
        state = settle(db, lambda s: ports(s)["p6"].ofport_request == 60)
        assert (
            60 in state.bridges[BRIDGE].used_ofports
            and 16 not in state.bridges[BRIDGE].used_ofports
        )

        ovs.vsctl("--no-wait", "del-port", BRIDGE, "p1")
        settle(db, lambda s: "p1" not in ports(s))
        remembered = len(db._rows._ports)
        ovs.vsctl("--no-wait", "del-br", BRIDGE)
        settle(db, lambda s: BRIDGE not in s.bridges)
        assert len(db._rows._ports) < remembered, "a gone bridge's ports are forgotten"
    finally:
        db.close()


def test_a_port_of_ours_sent_but_not_committed_reads_as_before(ovs: lab_ovs.OvsInstance) -> None:
    """While our own port write is in flight its rows hold the transaction's values: they are
    converted from those (as without the cache) and not remembered."""
    db = Ovsdb(ovs.db_url)
    try:
        db.ensure_bridge(EnsureOvsBridge(BRIDGE, "netdev"))
        for k in range(1, 4):
            ovs.vsctl("--no-wait", "add-port", BRIDGE, f"q{k}")
        settle(db, lambda s: len(ports(s)) == 3)
        op = EnsureOvsPort(BRIDGE, "qnew", 40, network="blue", endpoint="e1", wait=False)
        db.ensure_port(op)  # sent only
        state = db.observe([BRIDGE])
        assert state.bridges == afresh(db)
        with pytest.raises(OvsdbError, match="qnew"):  # no device: ofport -1
            db.await_port(AwaitOvsPort(BRIDGE, op.name, op.ofport))
        settle(db, lambda s: "qnew" in ports(s))
    finally:
        db.close()

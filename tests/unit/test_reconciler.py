"""The reconcile pass and loop on stateful fakes: MemoryKV → Cache → Reconciler → FakeKernel.

Asserts end states (what the fake kernel holds, what status says), not call sequences.
"""

from __future__ import annotations

import threading
import time

from controller.dataplane.fake_kernel import FakeKernel
from controller.desired import DesiredState
from controller.model import codec
from controller.model.records import Endpoint, Host
from controller.plan.kernel_ops import ConfigureEndpoint
from controller.reconcile.loop import PassResult, Reconciler
from controller.reconcile.status import StatusWriter
from controller.reconcile.trigger import Trigger
from controller.store import keys
from controller.store.cache import Cache
from controller.store.memory import MemoryKV

H1 = Host("h1", "172.31.253.1")
H2 = Host("h2", "172.31.253.2", underlay_mtu=9000)


def world() -> tuple[MemoryKV, Cache, FakeKernel, DesiredState]:
    kv = MemoryKV()
    for h in (H1, H2):
        kv.put_raw(keys.host(h.name), codec.encode_host(h))
    return kv, Cache(), FakeKernel(H1.vtep, netns=("c1", "c2", "c3")), DesiredState(kv)


def sync(kv: MemoryKV, cache: Cache) -> None:
    cache.replace_all(kv.list(keys.ROOT))


def make(
    cache: Cache,
    fk: FakeKernel,
    kv: MemoryKV | None = None,
    trigger: Trigger | None = None,
    resync: float = 30.0,
) -> Reconciler[object, object]:
    on_result = StatusWriter(kv, H1.name) if kv is not None else (lambda r: None)
    return Reconciler(
        H1,
        cache.snapshot,
        fk,
        trigger or Trigger(),
        on_result,  # type: ignore[arg-type]
        resync_interval=resync,
        backoff_initial=0.01,
        backoff_max=0.05,
    )


def test_pass_converges_and_second_pass_is_empty() -> None:
    kv, cache, fk, ds = world()
    ds.create_network("blue", "10.1.0.0/24", gateway="10.1.0.1")
    local = ds.create_endpoint("blue", "h1", netns="c1")
    remote = ds.create_endpoint("blue", "h2", netns="x")
    sync(kv, cache)
    rec = make(cache, fk, kv)
    desired_rev = kv.revision
    first = rec.run_pass()
    assert first.ok and first.changes > 0
    assert rec.run_pass().changes == 0
    state = fk.observe(rec_view(cache))
    vx = [link for link in state.links.values() if link.kind == "vxlan"]
    assert len(vx) == 1 and vx[0].mtu == 1450  # min(1500, 9000) - 50
    assert {(f.mac, f.dst) for f in state.fdb[vx[0].name]} >= {(remote.mac, H2.vtep)}
    assert {(n.ip, n.mac) for n in state.neigh[vx[0].name]} == {(remote.ip, remote.mac)}
    assert state.endpoints[("c1", "eth0")].present
    assert any(a.startswith(local.ip + "/") for a in state.endpoints[("c1", "eth0")].addresses)
    status = codec.decode_status(kv.get(keys.status("h1")).value)  # type: ignore[union-attr]
    assert status.ok and status.revision == desired_rev


def rec_view(cache: Cache):  # type: ignore[no-untyped-def]
    from controller.model.view import host_view

    return host_view(cache.snapshot(), H1)


def test_last_endpoint_leaving_removes_everything_owned_only() -> None:
    kv, cache, fk, ds = world()
    fk.add_foreign_link("hdmine-not")  # looks like ours by name, but has no owner marker
    ds.create_network("blue", "10.1.0.0/24")
    ep = ds.create_endpoint("blue", "h1", netns="c1")
    sync(kv, cache)
    rec = make(cache, fk)
    rec.run_pass()
    ds.remove_endpoint("blue", ep.id)
    sync(kv, cache)
    assert rec.run_pass().ok
    state = fk.observe(rec_view(cache))
    assert [link.name for link in state.links.values() if link.owned] == []
    assert "hdmine-not" in state.links


def test_bad_records_are_reported_and_skipped() -> None:
    kv, cache, fk, ds = world()
    ds.create_network("blue", "10.1.0.0/24")
    good = ds.create_endpoint("blue", "h1", netns="c1")
    kv.put_raw(keys.endpoint("blue", "garbage"), "{not json")
    kv.put_raw(
        keys.endpoint("nonet", "e1"),
        codec.encode_endpoint(
            good.__class__("e1", "nonet", "h1", "10.9.0.2", "02:00:0a:09:00:02", "c2")
        ),
    )
    kv.put_raw(
        keys.endpoint("blue", "e2"),
        codec.encode_endpoint(
            good.__class__("e2", "blue", "ghost", "10.1.0.77", "02:00:0a:01:00:4d", "c2")
        ),
    )
    sync(kv, cache)
    result = make(cache, fk, kv).run_pass()
    assert result.ok
    assert len(result.problems) == 3
    joined = " ".join(result.problems)
    assert "garbage" in joined and "nonet" in joined and "ghost" in joined
    status = codec.decode_status(kv.get(keys.status("h1")).value)  # type: ignore[union-attr]
    assert len(status.skipped) == 3
    assert fk.observe(rec_view(cache)).endpoints[("c1", "eth0")].present


def test_failure_is_reported_then_repaired_by_the_loop() -> None:
    kv, cache, fk, ds = world()
    ds.create_network("blue", "10.1.0.0/24")
    ds.create_endpoint("blue", "h1", netns="c1")
    sync(kv, cache)
    fk.fail_next(ConfigureEndpoint)
    results: list[PassResult] = []
    trigger = Trigger()
    rec = Reconciler(
        H1,
        cache.snapshot,
        fk,
        trigger,
        results.append,
        resync_interval=30,
        backoff_initial=0.01,
        backoff_max=0.05,
    )
    t = threading.Thread(target=rec.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (results and results[-1].ok):
        time.sleep(0.01)
    rec.stop()
    t.join(5)
    assert not results[0].ok and "injected failure" in (results[0].error or "")
    assert results[-1].ok
    assert rec.run_pass().changes == 0


def test_wake_up_runs_a_pass_and_idle_loop_does_not_spin() -> None:
    kv, cache, fk, ds = world()
    sync(kv, cache)
    trigger = Trigger()
    results: list[PassResult] = []
    rec = Reconciler(H1, cache.snapshot, fk, trigger, results.append, resync_interval=30)
    t = threading.Thread(target=rec.run, daemon=True)
    t.start()
    time.sleep(0.3)
    idle_passes = len(results)
    ds.create_network("blue", "10.1.0.0/24")
    ds.create_endpoint("blue", "h1", netns="c1")
    sync(kv, cache)
    trigger.fire()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(r.changes for r in results):
        time.sleep(0.01)
    rec.stop()
    t.join(5)
    assert idle_passes == 1
    assert any(r.changes for r in results)


def test_status_writer_skips_identical_quiet_passes() -> None:
    kv = MemoryKV()
    w = StatusWriter(kv, "h1", heartbeat=60)
    r = PassResult(5, time.time(), 0.001, 0, True, None, ())
    w(r)
    rev = kv.revision
    w(PassResult(5, time.time(), 0.001, 0, True, None, ()))
    assert kv.revision == rev  # nothing new to say
    w(PassResult(6, time.time(), 0.001, 2, True, None, ()))
    assert kv.revision == rev + 1
    kv.available = False
    w(PassResult(7, time.time(), 0.001, 0, False, "boom", ()))  # must not raise


class CountingKernel(FakeKernel):
    """FakeKernel that counts how often the data plane was observed."""

    observed = 0

    def observe(self, view):  # type: ignore[no-untyped-def]
        self.observed += 1
        return super().observe(view)


def counting_world() -> tuple[MemoryKV, Cache, CountingKernel, DesiredState]:
    """One network with one endpoint on h1, synced into the cache, on a counting kernel."""
    kv, cache, _, ds = world()
    fk = CountingKernel(H1.vtep, netns=("c1", "c2", "c3"))
    ds.create_network("blue", "10.1.0.0/24")
    ds.create_endpoint("blue", "h1", netns="c1")
    sync(kv, cache)
    return kv, cache, fk, ds


def test_a_desired_wake_with_an_unchanged_view_does_not_observe_the_data_plane() -> None:
    kv, cache, fk, ds = counting_world()
    rec = make(cache, fk, kv)
    assert rec.run_pass(full=False).changes > 0  # nothing realised yet: a full pass
    seen = fk.observed
    kv.put_raw(keys.network("bad"), "[[[")  # elsewhere: a bad record, reported
    sync(kv, cache)
    quiet = rec.run_pass(full=False)
    assert quiet.ok and fk.observed == seen and rec.skipped_passes == 1
    assert any("bad" in p for p in quiet.problems)
    rec.run_pass(full=True)  # a resync or a data-plane wake always observes
    assert fk.observed == seen + 1
    ds.create_endpoint("blue", "h2", netns="x")  # this host's view changes: observed
    sync(kv, cache)
    assert rec.run_pass(full=False).changes > 0 and fk.observed == seen + 2


def test_after_a_failed_pass_a_desired_wake_observes_again() -> None:
    kv, cache, fk, _ = counting_world()
    fk.fail_next(ConfigureEndpoint)
    rec = make(cache, fk, kv)
    assert not rec.run_pass().ok
    before = fk.observed
    assert rec.run_pass(full=False).ok and fk.observed == before + 1


def test_trigger_keeps_the_strongest_wake() -> None:
    from controller.reconcile.trigger import Wake

    t = Trigger()
    assert t.wait(0.01) is Wake.TIMEOUT
    t.fire_desired()
    assert t.wait(0.01) is Wake.DESIRED
    t.fire_desired()
    t.fire()
    t.fire_desired()
    assert t.wait(0.01) is Wake.FULL
    assert t.wait(0.01) is Wake.TIMEOUT


def test_quiet_status_updates_are_coalesced_and_the_last_one_is_flushed() -> None:
    kv = MemoryKV()
    w = StatusWriter(kv, "h1", heartbeat=60, quiet_interval=0.3)
    w(PassResult(5, time.time(), 0.001, 1, True, None, ()))
    rev = kv.revision
    for r in range(6, 16):  # a storm of quiet passes: revision and skipped move only
        w(PassResult(r, time.time(), 0.001, 0, True, None, (f"bad{r}",)))
    assert kv.revision == rev  # none written yet
    w(PassResult(16, time.time(), 0.001, 0, False, "boom", ()))  # health changed: at once
    assert kv.revision == rev + 1
    w(PassResult(17, time.time(), 0.001, 0, False, "boom", ("bad17",)))
    time.sleep(0.6)  # the timer publishes the trailing quiet update
    st = codec.decode_status(kv.get(keys.status("h1")).value)  # type: ignore[union-attr]
    assert st.revision == 17 and st.skipped_count == 1 and kv.revision == rev + 2
    w.close()


def test_new_problems_alone_do_not_observe_the_data_plane() -> None:
    kv, cache, fk, _ = counting_world()
    rec = make(cache, fk, kv)
    rec.run_pass()
    seen = fk.observed
    # an endpoint on a host nobody registered: a problem of this host's view, nothing to build
    kv.put_raw(keys.endpoint("blue", "ghost"), codec.encode_endpoint(
        Endpoint("ghost", "blue", "nohost", "10.1.0.9", "02:00:0a:01:00:09")))  # fmt: skip
    sync(kv, cache)
    quiet = rec.run_pass(full=False)
    assert fk.observed == seen and any("unknown host" in p for p in quiet.problems)


def test_a_pass_records_its_stages_and_how_long_its_event_waited(caplog) -> None:  # type: ignore[no-untyped-def]
    import logging

    from controller.reconcile.loop import PASS_LINE

    kv, cache, fk, ds = world()
    ds.create_network("blue", "10.1.0.0/24", gateway="10.1.0.1")
    ds.create_endpoint("blue", "h1", netns="c1")
    ds.create_endpoint("blue", "h2", netns="x")
    sync(kv, cache)
    rec = make(cache, fk)
    with caplog.at_level(logging.INFO, logger="heddle.pass"):
        result = rec.run_pass(trigger="event", woken_at=time.monotonic() - 0.05)
    names = [name for name, _ in result.stages]
    assert names[:4] == ["snapshot", "view", "observe", "plan"]
    assert names.index("EnsureVeth") < names.index("ConfigureEndpoint")
    assert {"PutFdb", "PutNeigh", "PutPortFdb"} <= set(names)
    times = [at for _, at in result.stages]
    assert times == sorted(times) and times[-1] <= result.duration
    assert result.waited is not None and result.waited >= 0.05
    line = next(r.getMessage() for r in caplog.records if "pass id=" in r.getMessage())
    assert PASS_LINE.search(line) and "waited_ms=" in line and "stages=snapshot:" in line
    quiet = rec.run_pass()  # nothing to do: no stages in the line, no wait
    assert quiet.changes == 0 and quiet.waited is None


def test_event_passes_plan_against_the_remembered_state_and_resyncs_read_afresh() -> None:
    """With the incremental kernel wrapper: a remote change woken by an event is planned
    without reading the fake; a resync pass (or any non-event pass) reads it again."""
    from controller.dataplane.incremental import Incremental
    from controller.plan.kernel_incremental import KernelShortcut

    kv, cache, fk, ds = world()
    ds.create_network("blue", "10.1.0.0/24")
    ds.create_endpoint("blue", "h1", netns="c1")
    sync(kv, cache)
    rec = Reconciler(H1, cache.snapshot, Incremental(fk, KernelShortcut(), 3600.0), Trigger())
    assert rec.run_pass(trigger="start").changes > 0
    assert rec.run_pass(trigger="event").changes == 0  # after links changed: read in full
    reads = fk.observations
    ds.create_endpoint("blue", "h2", netns="x")
    sync(kv, cache)
    got = rec.run_pass(trigger="event")
    assert got.ok and got.changes > 0 and got.remembered and fk.observations == reads
    again = rec.run_pass(trigger="resync")
    assert again.ok and again.changes == 0 and not again.remembered
    assert fk.observations == reads + 1
    # a wake-up for the data plane itself (an ovs-vswitchd restart, drift announced by the
    # kernel): the event pass reads afresh too
    ds.create_endpoint("blue", "h2", netns="y")
    sync(kv, cache)
    woken = rec.run_pass(trigger="event", afresh=True)
    assert woken.ok and woken.changes > 0 and not woken.remembered
    assert fk.observations == reads + 2


def test_a_pass_that_changed_links_is_verified_at_once_and_leaves_the_driver_settled() -> None:
    """After the first pass builds links the incremental driver remembers nothing; the loop
    reads the data plane once more at once (``verify``), so the next remote change is planned
    against a remembered observation. A plain driver is always settled: no extra pass."""
    from controller.dataplane.incremental import Incremental
    from controller.plan.kernel_incremental import KernelShortcut

    kv, cache, fk, ds = world()
    ds.create_network("blue", "10.1.0.0/24")
    ds.create_endpoint("blue", "h1", netns="c1")
    sync(kv, cache)
    for driver, expected in (
        (Incremental(fk, KernelShortcut(), 3600.0), ["start", "verify"]),
        (FakeKernel(H1.vtep, netns=("c1",)), ["start"]),
    ):
        results: list[PassResult] = []
        rec = Reconciler(H1, cache.snapshot, driver, Trigger(), results.append)  # type: ignore[arg-type]
        t = threading.Thread(target=rec.run, daemon=True)
        t.start()
        time.sleep(0.3)
        rec.stop()
        t.join(5)
        assert [r.trigger for r in results] == expected
        assert results[0].changes > 0 and all(r.changes == 0 for r in results[1:])
        assert driver.settled


def test_addresses_that_became_reachable_are_announced_after_the_apply_once() -> None:
    """The reconciler tells local endpoints about new bindings after a successful apply
    (``controller/plan/announce.py``): not on the first pass, not after a failed apply, and
    the retry that succeeds makes up for it."""
    from controller.dataplane.fake_announce import RecordingAnnouncer
    from controller.model.naming import veth_host_name
    from controller.plan.kernel_ops import PutFdb

    kv, cache, fk, ds = world()
    ds.create_network("blue", "10.1.0.0/24")
    local = ds.create_endpoint("blue", "h1", netns="c1")
    sync(kv, cache)
    told = RecordingAnnouncer()
    rec = Reconciler(H1, cache.snapshot, fk, Trigger(), announcer=told)
    first = rec.run_pass(trigger="start")
    assert first.ok and first.announced is None and told.sent == []
    remote = ds.create_endpoint("blue", "h2", netns="x")
    sync(kv, cache)
    got = rec.run_pass(trigger="event")
    assert got.ok and got.announced is not None and got.announced.sent == 1
    (a,) = told.sent
    assert (a.port, a.to_mac, a.ip, a.mac) == (
        veth_host_name("blue", local.id),
        local.mac,
        remote.ip,
        remote.mac,
    )
    assert "Announce" in dict(got.stages)
    assert rec.run_pass(trigger="event").announced is None  # nothing new
    other = ds.create_endpoint("blue", "h2", netns="y")
    sync(kv, cache)
    fk.fail_next(PutFdb)
    failed = rec.run_pass(trigger="event")
    assert not failed.ok and failed.announced is None and len(told.sent) == 1
    retried = rec.run_pass(trigger="retry")
    assert retried.ok and [a.ip for a in told.sent[1:]] == [other.ip]


def test_an_announcement_out_of_a_missing_port_is_counted_not_an_error() -> None:
    from controller.dataplane.fake_announce import RecordingAnnouncer

    kv, cache, fk, ds = world()
    ds.create_network("blue", "10.1.0.0/24")
    ds.create_endpoint("blue", "h1", netns="c1")
    sync(kv, cache)
    rec = Reconciler(H1, cache.snapshot, fk, Trigger(), announcer=RecordingAnnouncer(set))
    rec.run_pass(trigger="start")
    ds.create_endpoint("blue", "h2", netns="x")
    sync(kv, cache)
    got = rec.run_pass(trigger="event")
    assert got.ok and got.announced is not None
    assert (got.announced.sent, got.announced.gone) == (0, 1)

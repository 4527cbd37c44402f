"""Metrics, health, the telemetry HTTP endpoint and JSON logs, on stateful fakes and a real
socket on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.dataplane.fake_kernel import FakeKernel
from controller.desired import DesiredState
from controller.diag.facts import decode_facts
from controller.model import codec
from controller.model.records import Host
from controller.model.view import HostView
from controller.reconcile.loop import PASS_LINE, PassResult, Reconciler
from controller.reconcile.trigger import Trigger
from controller.store import keys
from controller.store.cache import Cache
from controller.store.memory import MemoryKV
from controller.telemetry.health import Health
from controller.telemetry.logformat import JsonFormatter
from controller.telemetry.metrics import AgentMetrics, BuildInfo
from controller.telemetry.server import NotReady, TelemetryServer

H1 = Host("h1", "172.31.253.1")
H2 = Host("h2", "172.31.253.2")


class Stats:
    reconnects = 2
    relists = 3
    revision_seen = 42
    following = 5


def samples(m: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    out = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def world() -> tuple[MemoryKV, Cache, FakeKernel, Reconciler[object, object], AgentMetrics]:
    kv = MemoryKV()
    for h in (H1, H2):
        kv.put_raw(keys.host(h.name), codec.encode_host(h))
    ds = DesiredState(kv)
    ds.create_network("blue", "10.1.0.0/24")
    ds.create_endpoint("blue", "h1", netns="c1", endpoint_id="a")
    ds.create_endpoint("blue", "h2", netns="x", endpoint_id="b")
    cache = Cache()
    cache.replace_all(kv.list(keys.ROOT))
    fk = FakeKernel(H1.vtep, netns=("c1",))
    metrics = AgentMetrics(BuildInfo("9.9", "kernel", "h1"), lambda: Stats())
    rec: Reconciler[object, object] = Reconciler(
        H1,
        cache.snapshot,
        fk,
        Trigger(),
        metrics.record_pass,  # type: ignore[arg-type]
    )
    return kv, cache, fk, rec, metrics


def test_a_pass_is_counted_by_trigger_with_its_changes_and_what_it_owns() -> None:
    _, _, _, rec, metrics = world()
    first = rec.run_pass(trigger="start")
    second = rec.run_pass(full=False, trigger="event")
    assert (first.pass_id, second.pass_id) == (1, 2)
    assert first.observed and not second.observed
    s = samples(metrics)
    assert s["heddle_passes_total", (("result", "ok"), ("trigger", "start"))] == 1
    assert s["heddle_passes_total", (("result", "ok"), ("trigger", "event"))] == 1
    assert s["heddle_pass_duration_seconds_count", (("kind", "full"),)] == 1
    assert s["heddle_pass_duration_seconds_count", (("kind", "view"),)] == 1
    assert sum(v for (n, _), v in s.items() if n == "heddle_changes_total") == first.changes
    assert s["heddle_changes_total", (("op", "EnsureVeth"),)] == 1
    assert s["heddle_owned_objects", (("kind", "fdb"),)] == 2  # one unicast, one flood
    assert s["heddle_owned_objects", (("kind", "neigh"),)] == 1
    assert s["heddle_local_endpoints", ()] == 1
    assert s["heddle_member_peers", ()] == 1
    assert s["heddle_networks", ()] == 1
    assert s["heddle_revision_applied", ()] == first.revision
    assert s["heddle_watch_restarts_total", ()] == 2
    assert s["heddle_watch_relists_total", ()] == 3
    assert s["heddle_etcd_revision", ()] == 42
    assert s["heddle_watched_networks", ()] == 5
    assert s["heddle_build_info", (("backend", "kernel"), ("host", "h1"), ("version", "9.9"))] == 1


def test_announcements_are_counted_by_result() -> None:
    from dataclasses import replace

    from controller.dataplane.announce import Sent

    _, _, _, rec, metrics = world()
    result = rec.run_pass(trigger="start")
    metrics.record_pass(replace(result, announced=Sent(sent=3, gone=1, failed=0)))
    s = samples(metrics)
    assert s["heddle_announcements_total", (("result", "sent"),)] == 3
    assert s["heddle_announcements_total", (("result", "gone"),)] == 1
    assert ("heddle_announcements_total", (("result", "failed"),)) not in s


def test_a_failed_op_is_counted_by_its_kind() -> None:
    from controller.plan.kernel_ops import EnsureVeth

    _, _, fk, rec, metrics = world()
    fk.fail_next(EnsureVeth)
    result = rec.run_pass(trigger="start")
    assert not result.ok and result.error_kinds == ("EnsureVeth",)
    s = samples(metrics)
    assert s["heddle_errors_total", (("kind", "EnsureVeth"),)] == 1
    assert s["heddle_passes_total", (("result", "error"), ("trigger", "start"))] == 1


def test_plugin_methods_are_counted_and_their_labels_bounded() -> None:
    metrics = AgentMetrics(BuildInfo("1", "kernel", "h1"))
    metrics.record_plugin("NetworkDriver.Join", True, 0.002)
    metrics.record_plugin("NetworkDriver.Join", False, 0.004)
    for i in range(200):
        metrics.record_plugin(f"junk{i}", False, 0.001)
    s = samples(metrics)
    assert (
        s["heddle_plugin_requests_total", (("method", "NetworkDriver.Join"), ("result", "ok"))] == 1
    )
    assert (
        s["heddle_plugin_request_duration_seconds_count", (("method", "NetworkDriver.Join"),)] == 2
    )
    methods = {dict(lbl)["method"] for (n, lbl) in s if n == "heddle_plugin_requests_total"}
    assert len(methods) <= 65 and "other" in methods


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_health_is_ready_only_after_a_pass_and_while_etcd_answers() -> None:
    clock = Clock()
    state = {"worker": True, "passed": False, "contact": None}
    health = Health(
        lambda: bool(state["worker"]), lambda: bool(state["passed"]),
        lambda: state["contact"], grace=10.0, clock=clock,  # type: ignore[arg-type, return-value]
    )  # fmt: skip
    assert health.live().ok and not health.ready().ok
    state["passed"] = True
    assert health.ready().reason == "etcd has not answered yet"
    state["contact"] = 95.0
    assert health.ready().ok
    clock.now = 120.0
    assert not health.ready().ok and "25 s" in health.ready().reason
    state["contact"] = 119.0
    state["worker"] = False
    assert not health.live().ok and not health.ready().ok


@pytest.fixture
def served() -> Iterator[tuple[TelemetryServer, dict[str, object]]]:
    _, _, fk, rec, metrics = world()
    state: dict[str, object] = {"ready": False}

    def diagnose(name: str):  # type: ignore[no-untyped-def]
        view = rec.view
        if view is None:
            raise NotReady("no pass has run yet")
        actual = fk.observe(HostView(view.host, tuple(n for n in view.networks)))
        return fk.facts(view, name, actual)

    health = Health(lambda: True, lambda: bool(state["ready"]), lambda: 0.0, grace=1e12,
                    clock=lambda: 1.0)  # fmt: skip
    server = TelemetryServer(("127.0.0.1", 0), metrics, health, diagnose)
    server.start()
    state["rec"] = rec
    try:
        yield server, state
    finally:
        server.stop()


def get(server: TelemetryServer, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_the_endpoint_answers_with_the_right_status_codes(
    served: tuple[TelemetryServer, dict[str, object]],
) -> None:
    server, state = served
    assert get(server, "/healthz")[0] == 200
    assert get(server, "/readyz") == (503, b"no successful pass yet\n")
    assert get(server, "/diag/networks/blue")[0] == 503
    rec = state["rec"]
    rec.run_pass()  # type: ignore[attr-defined]
    state["ready"] = True
    assert get(server, "/readyz") == (200, b"ready\n")
    status, body = get(server, "/metrics")
    assert status == 200 and b"heddle_pass_duration_seconds_bucket" in body
    status, body = get(server, "/diag/networks/blue")
    assert status == 200
    facts = decode_facts(body)
    assert facts.network == "blue" and facts.endpoint("a") is not None
    assert get(server, "/diag/networks/red")[0] == 404
    assert get(server, "/diag/networks/../../etc")[0] == 404
    assert get(server, "/nothing")[0] == 404


def test_json_logs_carry_the_pass_fields_at_the_top_level() -> None:
    record = logging.LogRecord("heddle.pass", logging.INFO, __file__, 1, "pass id=%d", (7,), None)
    record.heddle = {"pass_id": 7, "trigger": "resync", "msg": "must not clobber"}
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "pass id=7" and line["pass_id"] == 7 and line["trigger"] == "resync"
    assert line["level"] == "info" and line["logger"] == "heddle.pass"
    assert line["ts"].endswith("Z")


def test_the_reconciler_logs_one_structured_line_per_pass(caplog: pytest.LogCaptureFixture) -> None:
    _, _, _, rec, _ = world()
    with caplog.at_level(logging.INFO, logger="heddle.pass"):
        result: PassResult = rec.run_pass(trigger="resync")
    lines = [r for r in caplog.records if r.name == "heddle.pass"]
    assert len(lines) == 1
    fields = lines[0].heddle  # type: ignore[attr-defined]
    assert fields["pass_id"] == result.pass_id and fields["trigger"] == "resync"
    assert fields["changes"] == result.changes and fields["errors"] == 0
    m = PASS_LINE.search(lines[0].getMessage())  # the text form the lab and benches parse
    assert m is not None and int(m["changes"]) == result.changes and m["trigger"] == "resync"

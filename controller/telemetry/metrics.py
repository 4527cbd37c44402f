"""The agent's Prometheus metrics (prometheus-client), one registry per agent.

Why a registry of our own and not the library's global one: tests and benchmarks run several
agents' worth of metrics in one process, and a global registry refuses a second metric of the
same name. Every update is O(1) and lock-free from the caller's view (the client's own locks
only), so a pass pays microseconds for its metrics (measured in bench/bench_metrics.py).

Counters that already exist elsewhere as plain integers (the watches' restarts and re-lists,
etcd's revision as last heard) are read at scrape time by a collector, not mirrored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from controller.reconcile.loop import PassResult

PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PLUGIN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PLUGIN_METHODS_MAX = 64  # distinct method labels kept; anything beyond counts as "other"


class WatchStats(Protocol):
    """What the metrics read from the agent's watches at scrape time
    (``controller/store/interest.py``)."""

    @property
    def reconnects(self) -> int: ...

    @property
    def relists(self) -> int: ...

    @property
    def revision_seen(self) -> int: ...

    @property
    def following(self) -> int: ...


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    backend: str
    host: str


class _WatchCollector(Collector):
    def __init__(self, stats: Callable[[], WatchStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        restarts = CounterMetricFamily(
            "heddle_watch_restarts", "etcd watch sessions started after a failure or compaction"
        )
        restarts.add_metric([], stats.reconnects)
        relists = CounterMetricFamily(
            "heddle_watch_relists",
            "full listings of a watched prefix (start, compaction, reconnect)",
        )
        relists.add_metric([], stats.relists)
        revision = GaugeMetricFamily(
            "heddle_etcd_revision", "newest etcd revision this agent has heard of (list/watch)"
        )
        revision.add_metric([], stats.revision_seen)
        following = GaugeMetricFamily(
            "heddle_watched_networks",
            "networks followed through a watch of their own (0: following all of /heddle/v1/, "
            "the store has no placement index yet)",
        )
        following.add_metric([], stats.following)
        yield from (restarts, relists, revision, following)


class _DropCollector(Collector):
    def __init__(self, drops: Callable[[], Mapping[str, int]]) -> None:
        self._drops = drops

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self._drops()
        except Exception:  # a scrape must not fail because the data plane cannot be read
            return
        fam = CounterMetricFamily(
            "heddle_filter_dropped", "packets the data plane's filters dropped, by reason "
            "(vxlan: not from a member VTEP; spoof: forged source on an endpoint port)",
            labels=["reason"],
        )  # fmt: skip
        for reason in ("vxlan", "spoof"):
            if reason in counts:
                fam.add_metric([reason], counts[reason])
        yield fam


class _RestoreCollector(Collector):
    def __init__(self, restored: Callable[[], int]) -> None:
        self._restored = restored

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(
            "heddle_host_record_restored",
            "times this agent found its hosts/<name> record changed by another etcd client and "
            "put it back",
        )
        fam.add_metric([], self._restored())
        yield fam


class AgentMetrics:
    """The metrics of one agent. ``record_pass`` and ``record_plugin`` are the only writers;
    both are thread-safe and never raise for well-formed input. ``drops`` is read at scrape
    time (the data plane's own counters), ``restored`` too (``Membership.restored``)."""

    def __init__(
        self,
        build: BuildInfo,
        watch: Callable[[], WatchStats | None] = lambda: None,
        drops: Callable[[], Mapping[str, int]] = dict,
        restored: Callable[[], int] = lambda: 0,
    ) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        Info("heddle_build", "heddle version, backend and host", registry=r).info(
            {"version": build.version, "backend": build.backend, "host": build.host}
        )
        r.register(_WatchCollector(watch))
        r.register(_DropCollector(drops))
        r.register(_RestoreCollector(restored))
        self.pass_duration = Histogram(
            "heddle_pass_duration_seconds",
            "reconcile pass duration; kind=full observed the data plane, kind=incremental planned "
            "against the observation the last pass left, kind=view stopped at an "
            "unchanged view",
            ["kind"], buckets=PASS_BUCKETS, registry=r,
        )  # fmt: skip
        self.passes = Counter(
            "heddle_passes", "reconcile passes by what started them and how they ended",
            ["trigger", "result"], registry=r,
        )  # fmt: skip
        self.changes = Counter(
            "heddle_changes", "data-plane changes applied, by op", ["op"], registry=r
        )
        self.errors = Counter(
            "heddle_errors", "failed ops (by op) and failed passes (by exception)", ["kind"],
            registry=r,
        )  # fmt: skip
        self.revision_applied = Gauge(
            "heddle_revision_applied", "etcd revision of the last successful pass", registry=r
        )
        self.skipped = Gauge(
            "heddle_records_skipped", "records left out as invalid or conflicting", registry=r
        )
        self.local_endpoints = Gauge(
            "heddle_local_endpoints", "endpoints on this host (last pass)", registry=r
        )
        self.networks = Gauge(
            "heddle_networks", "networks with an endpoint on this host (last pass)", registry=r
        )
        self.peers = Gauge(
            "heddle_member_peers", "other hosts sharing a network with this one", registry=r
        )
        self.owned = Gauge(
            "heddle_owned_objects",
            "data-plane objects heddle owns on this host after the last clean full pass",
            ["kind"], registry=r,
        )  # fmt: skip
        self.plugin_requests = Counter(
            "heddle_plugin_requests", "Docker plugin requests by method and result",
            ["method", "result"], registry=r,
        )  # fmt: skip
        self.plugin_latency = Histogram(
            "heddle_plugin_request_duration_seconds", "Docker plugin request latency",
            ["method"], buckets=PLUGIN_BUCKETS, registry=r,
        )  # fmt: skip
        self.announcements = Counter(
            "heddle_announcements",
            "frames sent into local endpoints for addresses that became reachable "
            "(result=sent; gone: the port was missing or down; failed: refused otherwise)",
            ["result"], registry=r,
        )  # fmt: skip
        self._methods: set[str] = set()
        for kind in ("full", "view"):
            self.pass_duration.labels(kind)  # present (zero) before the first pass

    def record_pass(self, result: PassResult) -> None:
        """Account one pass (the reconciler's ``on_result``)."""
        kind = "view" if not result.observed else "incremental" if result.remembered else "full"
        self.pass_duration.labels(kind).observe(result.duration)
        self.passes.labels(result.trigger, "ok" if result.ok else "error").inc()
        for op, n in result.op_counts:
            self.changes.labels(op).inc(n)
        for err in result.error_kinds:
            self.errors.labels(err).inc()
        self.skipped.set(len(result.problems))
        if result.ok:
            self.revision_applied.set(result.revision)
        if result.stats is not None:
            self.local_endpoints.set(result.stats.local_endpoints)
            self.networks.set(result.stats.networks)
            self.peers.set(result.stats.peers)
        if result.inventory is not None:
            self._set_owned(result.inventory)
        told = result.announced
        if told is not None:
            for what, n in (("sent", told.sent), ("gone", told.gone), ("failed", told.failed)):
                if n:
                    self.announcements.labels(what).inc(n)

    def _set_owned(self, inventory: Mapping[str, int]) -> None:
        for kind, n in inventory.items():
            self.owned.labels(kind).set(n)

    def record_plugin(self, method: str, ok: bool, seconds: float) -> None:
        """Account one Docker plugin request. ``method`` is the request path's last part;
        the number of distinct labels is capped (a client can send any path)."""
        if method not in self._methods:
            if len(self._methods) >= PLUGIN_METHODS_MAX:
                method = "other"
            else:
                self._methods.add(method)
        self.plugin_requests.labels(method, "ok" if ok else "error").inc()
        self.plugin_latency.labels(method).observe(seconds)

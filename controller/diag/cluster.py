"""``heddle status``'s judgement of the cluster, from one consistent read of etcd. Pure.

A cluster is healthy when every registered host is alive, has published a status that is ok
and not stuck, and passed within ``stale_after`` seconds (agents re-publish at least every
30 s), and when no record in etcd is skipped as invalid or conflicting. Everything else is
listed in ``problems``, most important first, one line each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.model.records import HostStatus
from controller.model.view import Snapshot


@dataclass(frozen=True, slots=True)
class HostHealth:
    name: str
    vtep: str
    backend: str
    alive: bool
    ok: bool | None  # the last pass's outcome (None: no status published)
    last_pass_age: float | None
    revision: int | None
    revision_lag: int | None
    errors: tuple[str, ...] = ()
    stuck: str | None = None
    metrics: str | None = None
    problems: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()  # repairs the agent made behind someone else (not problems)


@dataclass(frozen=True, slots=True)
class NetworkSummary:
    name: str
    vni: int
    subnet: str
    mtu: int | None
    endpoints: Mapping[str, int] = field(default_factory=dict)  # host -> endpoint count


@dataclass(frozen=True, slots=True)
class ClusterReport:
    revision: int
    hosts: tuple[HostHealth, ...]
    networks: tuple[NetworkSummary, ...]
    skipped: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        return not self.problems


def _host_problems(
    name: str, alive: bool, st: HostStatus | None, age: float | None, stale_after: float
) -> tuple[str, ...]:
    out = []
    if not alive:
        out.append(f"host {name}: not alive (its agent is not running or cannot reach etcd)")
    if st is None:
        out.append(f"host {name}: has published no status")
        return tuple(out)
    if st.stuck:
        out.append(f"host {name}: stuck: {st.stuck}")
    if not st.ok:
        why = "; ".join(st.errors) or "not ok"
        out.append(f"host {name}: last pass failed: {why}")
    if age is not None and age > stale_after:
        out.append(f"host {name}: last status is {age:.0f} s old (more than {stale_after:.0f} s)")
    return tuple(out)


def _target(desired: int | Mapping[str, int] | None, snap: Snapshot, host: str) -> int:
    if desired is None:
        return snap.revision
    return desired if isinstance(desired, int) else desired.get(host, snap.revision)


def cluster_report(
    snap: Snapshot,
    statuses: Mapping[str, HostStatus],
    now: float,
    stale_after: float = 90.0,
    desired_revision: int | Mapping[str, int] | None = None,
) -> ClusterReport:
    """Judge ``snap`` (hosts, liveness, networks, skipped records) with the hosts' published
    ``statuses`` at wall-clock time ``now``. A host's ``revision_lag`` is how far its last
    pass is behind ``desired_revision`` (default: the snapshot's revision; per host when a
    mapping, as ``heddle status`` gives it); it is shown, not judged (an agent publishes quiet
    progress at most once a second)."""
    hosts = []
    problems: list[str] = []
    for name, host in sorted(snap.hosts.items()):
        st = statuses.get(name)
        alive = name in snap.alive
        age = max(0.0, now - st.last_pass) if st is not None else None
        hp = _host_problems(name, alive, st, age, stale_after)
        problems += hp
        hosts.append(
            HostHealth(
                name,
                host.vtep,
                host.backend,
                alive,
                st.ok if st else None,
                age,
                st.revision if st else None,
                max(0, _target(desired_revision, snap, name) - st.revision) if st else None,
                st.errors if st else (),
                st.stuck if st else None,
                st.metrics if st else None,
                hp,
                st.notices if st else (),
            )
        )
    per_net: dict[str, dict[str, int]] = {}
    for (net, _), ep in snap.endpoints.items():
        counts = per_net.setdefault(net, {})
        counts[ep.host] = counts.get(ep.host, 0) + 1
    networks = tuple(
        NetworkSummary(
            n.name, n.vni, n.subnets, n.mtu, dict(sorted(per_net.get(n.name, {}).items()))
        )
        for n in sorted(snap.networks.values(), key=lambda n: n.name)
    )
    skipped = tuple(snap.skipped)
    if skipped:
        problems.append(f"{len(skipped)} record(s) in etcd skipped as invalid or conflicting")
    return ClusterReport(snap.revision, tuple(hosts), networks, skipped, tuple(problems))

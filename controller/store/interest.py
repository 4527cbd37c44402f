"""``Interest``: what one host's agent follows in etcd, and the snapshot its reconciler reads.

An agent needs the networks that have an endpoint on its host, all of those networks'
endpoints, and the host and liveness records -- not the endpoints of the rest of the cluster.
With the placement index (``controller/store/keys.py``: ``placement/<host>/<network>/<id>``,
written with every endpoint by ``controller/store/endpoint_ops.py``) it watches:

* ``placement/<host>/``: which networks have an endpoint here;
* ``endpoints/<network>/`` of each of those networks, one watch each, started and stopped as
  the placement changes;
* ``networks/``, ``hosts/`` and ``alive/`` of the whole cluster. They change when an operator
  creates a network or a host joins, leaves or dies -- never per endpoint -- and every network
  record is needed because a VNI conflict with a network this host does not take part in
  decides which network owns the VNI (``controller/model/conflicts.py``).

So an endpoint change in a network with no endpoint on this host never reaches this agent.
The layout record and the placement keys are mirrored by ``controller/store/index_mirrors.py``.

Upgrade in place. A store written by an older release has no placement keys. The agent reads
``/heddle/v1/layout`` first (one more watch): until it says ``{"placement": true}`` (written by
``heddle store upgrade`` after it indexed every endpoint) the agent follows all of
``/heddle/v1/`` as before (*unscoped*). When the record appears, the agent starts the scoped
watches next to the old one and switches once every scoped watch holds its first listing, so
its snapshot never goes through an incomplete state; the old watch then stops. The switch is
one way: removing the record later changes nothing until the agent restarts.

Snapshots are composed from the caches of the scoped watches (conflicts resolved over the
union, as ``Cache.snapshot`` does) and built at most once per change. Only what changed is
redone: each network's endpoints are resolved on their own and combined
(``conflicts.resolve_apart``, exact; the union is resolved as one only when two endpoints
claim one interface), and the snapshot groups the endpoints by network with the same mapping
objects while a network is unchanged, so ``host_view``'s memo skips the untouched networks.
A scoped snapshot's revision is the newest revision at which a followed record changed (not a
progress notification, not a placement key: each watch is complete only up to its own
revision, so a revision heard on one watch says nothing about another's). ``newest_followed``
computes the same from a listing, for whoever checks whether an agent is behind. Thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from controller.model.conflicts import (
    NetworkResolved,
    NetworksDecided,
    decide_networks,
    resolve,
    resolve_apart,
    resolve_network,
)
from controller.model.errors import clip
from controller.model.records import Endpoint, Host, Network
from controller.model.view import Snapshot
from controller.store import keys
from controller.store.cache import Cache, Contents
from controller.store.index_mirrors import LayoutMirror, PlacementMirror
from controller.store.kv import KV
from controller.store.watcher import Watcher

log = logging.getLogger(__name__)

CLUSTER_PREFIXES = (keys.NETWORKS, keys.HOSTS, keys.ALIVE)


def newest_followed(items: Iterable[tuple[str, int]], host: str) -> int:
    """The newest ``mod_revision`` among the keys ``host``'s agent follows, in ``items`` (key,
    mod_revision) of a listing of ``/heddle/v1/``: network, host and liveness records, and the
    endpoints of the networks with a placement key of ``host``. Pure.

    What an agent's status revision is compared with (``heddle status``, the lab's waits): an
    agent hears of a change only if it follows it, so etcd's newest revision would make every
    agent not concerned by the latest change look behind. Placement keys are left out, as
    they are of the agent's own snapshot revision: they only say which endpoints to follow,
    and the endpoint written with one arrives on its own watch."""
    pairs = list(items)
    mine = keys.placement_of(host)
    placed = {
        tail[0]
        for key, _ in pairs
        if key.startswith(mine) and len(tail := keys.split_tail(key, mine)) == 2
    }
    followed = tuple(keys.endpoints_of(n) for n in placed)
    return max(
        (rev for key, rev in pairs if key.startswith((*CLUSTER_PREFIXES, *followed))), default=0
    )


class _Followed:
    """One watch and its cache. ``synced`` turns True once the first listing is in the cache
    *and* its wake-up was delivered, and then ``on_synced`` runs: so whoever sees it True (the
    snapshot, ``Interest.wait_synced``) has had every wake-up of that listing already."""

    def __init__(
        self, kv_factory: Callable[[], KV], prefix: str, on_change: Callable[[], None],
        on_synced: Callable[[], None], **watcher_args: float,
    ) -> None:  # fmt: skip
        self.cache = Cache()
        self.synced = False
        self._on_synced = on_synced
        self.watcher = Watcher(
            kv_factory, prefix, self.cache, on_change, on_synced=self._first, **watcher_args
        )
        self.watcher.start()

    def _first(self) -> None:
        self.synced = True
        self._on_synced()


@dataclass(frozen=True, slots=True)
class _Part:
    """A followed network's cache, its contents and its endpoints resolved on their own."""

    cache: Cache
    contents: Contents
    resolved: NetworkResolved


class Interest:
    """Follow what ``host`` needs; see the module docstring. ``on_change`` wakes the consumer
    (from a watcher thread) whenever the snapshot may have changed."""

    def __init__(
        self,
        kv_factory: Callable[[], KV],
        host: str,
        on_change: Callable[[], None],
        **watcher_args: float,
    ) -> None:
        self._kv_factory = kv_factory
        self._host = host
        self._on_change = on_change
        self._args = watcher_args
        self._lock = threading.RLock()
        self._stopped = False
        self._synced = threading.Event()
        self._generation = 0
        self._built: tuple[int, Snapshot] | None = None
        # memos of _compose, each by the version of the cache it comes from
        self._decided: tuple[int, NetworksDecided, Mapping[str, Network]] | None = None
        self._hosts: tuple[int, Mapping[str, Host]] | None = None
        self._copies: dict[str, tuple[Cache, Contents]] = {}
        self._parts: dict[str, _Part] = {}
        self.scoped = False  # True once the snapshot comes from the scoped watches
        self._layout = LayoutMirror()
        self._layout_watch = Watcher(
            kv_factory, keys.LAYOUT, self._layout, self._decide,
            on_synced=self._decide, **watcher_args,
        )  # fmt: skip
        self._all: _Followed | None = None  # the unscoped watch of /heddle/v1/
        self._cluster: dict[str, _Followed] = {}
        self._placement = PlacementMirror(host)
        self._placement_watch: Watcher | None = None
        self._placement_followed = False
        self._networks: dict[str, _Followed] = {}

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._layout_watch.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            watchers = [self._layout_watch, *self._watchers()]
        for w in watchers:
            w.stop()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait until the snapshot is complete (all watches it is built from hold a first
        listing); False on timeout."""
        return self._synced.wait(timeout)

    def _watchers(self) -> list[Watcher]:
        out = [f.watcher for f in (*self._cluster.values(), *self._networks.values())]
        if self._all is not None:
            out.append(self._all.watcher)
        if self._placement_watch is not None:
            out.append(self._placement_watch)
        return out

    def _follow(self, prefix: str) -> _Followed:
        return _Followed(self._kv_factory, prefix, self._changed, self._listed, **self._args)

    def _listed(self) -> None:
        """A watch holds its first listing: it is part of the snapshot from now on (a new
        snapshot, then wake the consumer), and the whole may be complete."""
        self._changed()
        self._check()

    # -- decisions (watcher threads) ----------------------------------------------------------
    def _decide(self) -> None:
        """The layout record arrived or changed: follow unscoped, or start the scoped watches."""
        with self._lock:
            if self._stopped or not self._layout_watch.wait_synced(0):
                return
            if self._layout.placement:
                if not self._cluster:
                    log.info("placement index present: following this host's networks only")
                    self._cluster = {p: self._follow(p) for p in CLUSTER_PREFIXES}
                    self._placement_watch = Watcher(
                        self._kv_factory, keys.placement_of(self._host), self._placement,
                        self._placed, on_synced=self._placed, **self._args,
                    )  # fmt: skip
                    self._placement_watch.start()
            elif self._all is None and not self.scoped:
                log.info("no placement index (run `heddle store upgrade`): following all of "
                         "%s", keys.ROOT)  # fmt: skip
                self._all = self._follow(keys.ROOT)
        self._changed()  # a layout error is a problem to report

    def _placed(self) -> None:
        """The placement changed: follow the networks it names, drop the others."""
        with self._lock:
            if self._stopped or self._placement_watch is None:
                return
            if not self._placement_watch.wait_synced(0):
                return
            want = self._placement.networks()
            gone = [self._networks.pop(n) for n in list(self._networks) if n not in want]
            for net in sorted(want - self._networks.keys()):
                self._networks[net] = self._follow(keys.endpoints_of(net))
            self._placement_followed = True  # the networks of the first listing have watches
        for f in gone:
            threading.Thread(target=f.watcher.stop, daemon=True).start()
        self._changed()
        self._check()

    def _check(self) -> None:
        """Mark the snapshot complete once its watches are synced; switch to scoped then."""
        retire: _Followed | None = None
        with self._lock:
            if self._stopped:
                return
            if self._cluster and self._scoped_ready():
                if not self.scoped:
                    self.scoped, retire, self._all = True, self._all, None
                    self._generation += 1
                    log.info("following %d network(s) of this host", len(self._networks))
                self._synced.set()
            elif self._all is not None and self._all.synced:
                self._synced.set()
        if retire is not None:
            threading.Thread(target=retire.watcher.stop, daemon=True).start()
            self._on_change()

    def _scoped_ready(self) -> bool:
        return self._placement_followed and all(f.synced for f in (*self._cluster.values(),
                                                  *self._networks.values()))  # fmt: skip

    def _changed(self) -> None:
        with self._lock:
            self._generation += 1
        self._on_change()

    # -- the snapshot -------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The desired state this host needs, at the newest revision heard. Cheap when
        nothing changed. Before ``wait_synced`` it may be empty or partial."""
        with self._lock:
            gen = self._generation
            if self._built is not None and self._built[0] == gen:
                return self._built[1]
            if not self.scoped:
                snap = self._all.cache.snapshot() if self._all is not None else Snapshot(0)
            else:
                snap = self._compose()
            if self._layout.error is not None:
                snap = Snapshot(snap.revision, snap.networks, snap.endpoints, snap.hosts,
                                snap.alive, (*snap.skipped, self._layout.error))  # fmt: skip
            self._built = (gen, snap)
            return snap

    def _contents(self, prefix: str) -> Contents:
        """A cluster-wide cache's contents, copied only when its version moved."""
        cache = self._cluster[prefix].cache
        got = self._copies.get(prefix)
        if got is None or got[0] is not cache or got[1].version != cache.version:
            got = self._copies[prefix] = (cache, cache.contents())
        return got[1]

    def _part(self, name: str, followed: _Followed) -> _Part:
        """A followed network's endpoints resolved on their own, redone only when its cache's
        version moved: a change in one network costs that network, not every network."""
        got = self._parts.get(name)
        cache = followed.cache
        # a network followed again has a new cache, whose versions count from zero again
        if got is None or got.cache is not cache or got.contents.version != cache.version:
            c = cache.contents()
            got = self._parts[name] = _Part(cache, c, resolve_network(c.endpoints))
        return got

    def _compose(self) -> Snapshot:
        nets, hosts, alive = (self._contents(p) for p in CLUSTER_PREFIXES)
        skipped: dict[str, str] = {**nets.skipped, **hosts.skipped, **alive.skipped}
        revision = max(nets.changed_at, hosts.changed_at, alive.changed_at)
        parts: dict[str, _Part] = {}
        for name, followed in self._networks.items():
            if followed.synced:
                part = parts[name] = self._part(name, followed)
                skipped.update(part.contents.skipped)
                revision = max(revision, part.contents.changed_at)
        for gone in self._parts.keys() - parts.keys():
            del self._parts[gone]
        if self._decided is None or self._decided[0] != nets.version:
            decided = decide_networks(nets.networks)
            self._decided = (nets.version, decided, MappingProxyType(dict(decided.won)))
        if self._hosts is None or self._hosts[0] != hosts.version:
            self._hosts = (hosts.version, MappingProxyType(dict(hosts.hosts)))
        decided = self._decided[1]
        won = resolve_apart(nets.networks, {n: p.resolved for n, p in parts.items()}, decided)
        groups: dict[str, Mapping[tuple[str, str], Endpoint]] | None = None
        if won is not None:  # each network's winners, the same objects while it is unchanged
            groups = {n: p.resolved.won for n, p in parts.items() if n not in decided.lost}
        else:  # two endpoints claim one interface: resolve the union as one
            union = {k: v for p in parts.values() for k, v in p.contents.endpoints.items()}
            won = resolve(nets.networks, union, decided)
        invalid = (f"{clip(k)}: {why}" for k, why in sorted(skipped.items()))
        return Snapshot(
            revision, self._decided[2], MappingProxyType(dict(won.endpoints)), self._hosts[1],
            alive.alive, (*invalid, *won.problems), groups,
        )  # fmt: skip

    # -- what the metrics and the status read -------------------------------------------------
    @property
    def following(self) -> int:
        """Networks followed through their own watch (0 while unscoped)."""
        with self._lock:
            return len(self._networks) if self.scoped else 0

    @property
    def reconnects(self) -> int:
        with self._lock:
            return sum(w.reconnects for w in (self._layout_watch, *self._watchers()))

    @property
    def relists(self) -> int:
        with self._lock:
            return sum(w.relists for w in (self._layout_watch, *self._watchers()))

    @property
    def revision_seen(self) -> int:
        with self._lock:
            return max(w.revision_seen for w in (self._layout_watch, *self._watchers()))

    def stalled(self, after: float) -> str | None:
        """Why some watch has not followed etcd for more than ``after`` seconds, or None."""
        with self._lock:
            watchers = [self._layout_watch, *self._watchers()]
        for w in watchers:
            why = w.stalled(after)
            if why is not None:
                return why
        return None

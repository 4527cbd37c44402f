"""``EtcdKV``: the ``KV`` seam on a real etcd v3 server. With ``etcd_access.py`` (the Auth
service's messages), ``etcd_errors.py`` (its failures) and ``etcd_watch.py`` (a watch stream) the
only modules importing the client.

Client: ``pyetcd`` (PyPI ``etcd-sdk-python`` 0.0.7, the python-etcd3 API). Rules from
docs/platform.md E1-E5 and E7, each one a measured trap:

* Always ``MultiEndpointEtcd3Client`` with ``failover=True`` and ``time_retry=1``: the plain
  client locks a node out for 300 s after one ``UNAVAILABLE``.
* gRPC keepalive *and* ``grpc.http2.ping_timeout_ms``: without them a watch on a frozen or
  partitioned etcd hangs forever (with them it fails within ~5-15 s).
* Every unary call has a deadline (``timeout``).
* gRPC's reconnect backoff capped at 2 s: with its default (up to 120 s) a client that kept
  calling through a long outage stayed cut off for tens of seconds after etcd was back.
* One fresh client per watch stream, closed when the stream ends or is cancelled, so a broken
  stream never leaves state behind.
* Clients are created lazily and re-created in a forked child: grpc channels do not survive a
  fork. Create (or at least first use) an ``EtcdKV`` after forking.

Every client/grpc failure surfaces as ``StoreUnavailable`` naming the URL(s), a refusal
(permission denied, unauthenticated) as its subclass ``StoreRefused``; a compacted revision as
``Compacted`` (``controller/store/etcd_errors.py``). Thread-safe: grpc channels are, and
client creation is locked.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

# GRPC_ENABLE_FORK_SUPPORT is off before grpc is imported: controller/store/__init__.py.
import grpc
from pyetcd import Endpoint, MultiEndpointEtcd3Client, etcdrpc, utils

from controller.model.errors import StoreUnavailable
from controller.store.etcd_errors import DOWN, raise_store_error
from controller.store.etcd_watch import EtcdWatch, kv_of
from controller.store.kv import (
    MAX_READS,
    Compacted,
    Compare,
    Delete,
    DeletePrefix,
    KeyValue,
    Listing,
    Put,
    Read,
    Txn,
    TxnOp,
    TxnResult,
)

__all__ = ["GRPC_OPTIONS", "EtcdKV", "TLSFiles"]

log = logging.getLogger(__name__)

GRPC_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 10_000),  # etcd 3.4 rejects pings more often than every 5 s
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),  # grpcio 1.85: this is what bounds detection
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),  # large listings
    # E7: gRPC's own reconnect backoff (1 s, x1.6, up to 120 s) runs under every retry of
    # ours; after a 150 s outage the shared channel tried again only 49 s after etcd was back.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)

_TARGETS = {
    "create": etcdrpc.Compare.CREATE,
    "mod": etcdrpc.Compare.MOD,
    "version": etcdrpc.Compare.VERSION,
    "value": etcdrpc.Compare.VALUE,
}
_OPS = {
    "=": etcdrpc.Compare.EQUAL,
    "!=": etcdrpc.Compare.NOT_EQUAL,
    "<": etcdrpc.Compare.LESS,
    ">": etcdrpc.Compare.GREATER,
}


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM files for TLS: the CA that signed etcd's certificate (None: the system roots) and
    an optional client certificate/key pair (needed when etcd runs with ``--client-cert-auth``).
    Files are read when a client is created; unreadable files raise ``OSError`` then."""

    cacert: str | None
    cert: str | None = None
    key: str | None = None


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def _parse_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid etcd URL {url!r}: use http://HOST:PORT or https://HOST:PORT")
    return parts.hostname, parts.port or 2379, parts.scheme == "https"


def _range(key: str, prefix: bool, revision: int = 0) -> Any:
    """A range request for ``key`` (with ``prefix``: every key under it, sorted by key)."""
    raw = key.encode()
    if not prefix:
        return etcdrpc.RangeRequest(key=raw, revision=revision)
    return etcdrpc.RangeRequest(
        key=raw or b"\0",  # "" means every key: [\0, \0) is etcd's "all keys" range
        range_end=utils.prefix_range_end(raw) if raw else b"\0",
        revision=revision,
        sort_order=etcdrpc.RangeRequest.ASCEND,
        sort_target=etcdrpc.RangeRequest.KEY,
    )


class EtcdKV:
    """``KV`` on etcd at ``urls`` (one or more members), optionally over TLS.

    Construction does no I/O and never fails for an unreachable server; the first call does.
    Raises ``ValueError`` for a malformed URL or an https URL without ``tls``.
    """

    def __init__(
        self, urls: Sequence[str], tls: TLSFiles | None = None, timeout: float = 5.0
    ) -> None:
        if isinstance(urls, str):
            urls = [u for u in urls.split(",") if u]
        if not urls:
            raise ValueError("at least one etcd URL is needed")
        self._targets = [_parse_url(u) for u in urls]
        if any(secure for _, _, secure in self._targets) and tls is None:
            raise ValueError("https etcd URLs need TLS files (at least the CA certificate)")
        self.urls = tuple(urls)
        self.tls = tls
        self.timeout = timeout
        self._lock = threading.Lock()
        self._client: MultiEndpointEtcd3Client | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"EtcdKV({','.join(self.urls)})"

    # -- clients ------------------------------------------------------------------------------
    def _new_client(self) -> MultiEndpointEtcd3Client:
        creds = None
        if self.tls is not None:
            try:
                creds = grpc.ssl_channel_credentials(
                    _read(self.tls.cacert), _read(self.tls.key), _read(self.tls.cert)
                )
            except OSError as exc:
                raise StoreUnavailable(f"etcd TLS files unreadable: {exc}") from None
        endpoints = [
            Endpoint(
                host,
                port,
                secure=secure,
                creds=creds if secure else None,
                time_retry=1,
                opts=list(GRPC_OPTIONS),
            )
            for host, port, secure in self._targets
        ]
        return MultiEndpointEtcd3Client(endpoints, timeout=self.timeout, failover=True)

    def _get_client(self) -> MultiEndpointEtcd3Client:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                # after a fork the parent's channels are unusable: drop (do not close) them
                self._client = self._new_client()
                self._pid = os.getpid()
            return self._client

    def _fail(self, what: str, exc: BaseException, client: Any = None) -> NoReturn:
        raise_store_error(self.urls, what, exc, client)

    def call_auth(self, what: str, method: str, request: Any) -> Any:
        """One call of etcd's Auth service (``method`` of ``etcdrpc.AuthStub``), for
        ``controller/store/etcd_access.py``. Raises as every other call does."""
        return self._unary(what, lambda c: getattr(c.authstub, method)(request, c.timeout))

    def _unary(self, what: str, call: Any) -> Any:
        client = self._get_client()
        try:
            return call(client)
        except DOWN as exc:
            self._fail(what, exc, client)

    # -- reads --------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        req = _range(key, False)
        resp = self._unary(f"get {key}", lambda c: c.kvstub.Range(req, c.timeout))
        return kv_of(resp.kvs[0]) if resp.kvs else None

    def list(self, prefix: str, revision: int | None = None) -> Listing:
        """Keys under ``prefix`` sorted by key, at ``revision`` (default: now).

        Raises ``Compacted`` if ``revision`` is older than etcd's compaction point (etcd allows
        reading at exactly the compacted revision).
        """
        req = _range(prefix, True, revision or 0)
        try:
            resp = self._unary(f"list {prefix}", lambda c: c.kvstub.Range(req, c.timeout))
        except Compacted:
            # etcd does not say where it compacted; it is past ``revision`` (a lower bound)
            raise Compacted((revision or 0) + 1) from None
        items = tuple(kv_of(m) for m in resp.kvs)
        return Listing(items, revision if revision else resp.header.revision)

    def read(self, reads: Sequence[Read]) -> tuple[Listing, ...]:
        """One transaction of range requests: one round trip, one revision."""
        if len(reads) > MAX_READS:
            raise ValueError(f"{len(reads)} reads in one: at most {MAX_READS}")
        req = etcdrpc.TxnRequest(
            success=[etcdrpc.RequestOp(request_range=_range(r.key, r.prefix)) for r in reads]
        )
        resp = self._unary("read", lambda c: c.kvstub.Txn(req, c.timeout))
        rev = int(resp.header.revision)
        return tuple(
            Listing(tuple(kv_of(m) for m in r.response_range.kvs), rev) for r in resp.responses
        )

    # -- writes -------------------------------------------------------------------------------
    @staticmethod
    def _compare(c: Compare) -> Any:
        m = etcdrpc.Compare(key=c.key.encode(), target=_TARGETS[c.target], result=_OPS[c.op])
        if c.target == "value":
            m.value = c.value if isinstance(c.value, bytes) else str(c.value).encode()
        elif isinstance(c.value, bytes):
            raise ValueError(f"compare on {c.target} needs an int, got bytes")
        elif c.target == "create":
            m.create_revision = c.value
        elif c.target == "mod":
            m.mod_revision = c.value
        else:
            m.version = c.value
        return m

    @staticmethod
    def _op(op: TxnOp) -> Any:
        if isinstance(op, Put):
            return etcdrpc.RequestOp(
                request_put=etcdrpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease)
            )
        if isinstance(op, Delete):
            return etcdrpc.RequestOp(
                request_delete_range=etcdrpc.DeleteRangeRequest(key=op.key.encode())
            )
        assert isinstance(op, DeletePrefix)
        raw = op.prefix.encode()
        return etcdrpc.RequestOp(
            request_delete_range=etcdrpc.DeleteRangeRequest(
                key=raw, range_end=utils.prefix_range_end(raw)
            )
        )

    def commit(self, txn: Txn) -> TxnResult:
        """One etcd transaction: atomic, never partial. A put on an unknown lease raises
        ``StoreUnavailable`` (etcd rejects the whole transaction)."""
        req = etcdrpc.TxnRequest(
            compare=[self._compare(c) for c in txn.compares],
            success=[self._op(o) for o in txn.success],
            failure=[self._op(o) for o in txn.failure],
        )
        resp = self._unary("txn", lambda c: c.kvstub.Txn(req, c.timeout))
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    # -- leases -------------------------------------------------------------------------------
    def grant_lease(self, ttl: int) -> int:
        lease = self._unary(f"grant lease ttl={ttl}", lambda c: c.lease(ttl))
        return int(lease.id)

    def refresh_lease(self, lease_id: int) -> int:
        """Remaining TTL after a keep-alive; ``<= 0`` if the lease is gone (expired, revoked)."""
        responses = self._unary(
            f"refresh lease {lease_id:x}", lambda c: builtins.list(c.refresh_lease(lease_id))
        )
        return int(responses[0].TTL) if responses else 0

    def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys. Idempotent: an unknown lease is not an error."""
        client = self._get_client()
        try:
            client.revoke_lease(lease_id)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return
            self._fail(f"revoke lease {lease_id:x}", exc, client)
        except DOWN as exc:
            self._fail(f"revoke lease {lease_id:x}", exc, client)

    # -- watch, compaction --------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int) -> EtcdWatch:
        """Open a watch on ``prefix`` from ``start_revision`` on a fresh, dedicated client.

        Raises ``StoreUnavailable`` if the watch cannot be created. ``Compacted`` if
        ``start_revision <= `` the compaction point, raised here or (etcd 3.4) by the first
        iteration.
        """
        client = self._new_client()
        # etcd accepts a watch from exactly its compaction point but has dropped the deletions
        # made at that revision: ask for one revision earlier, so that case raises Compacted
        # too (as MemoryKV does), and drop the extra revision's events below.
        ask = start_revision - 1 if start_revision > 1 else start_revision
        try:
            it, cancel = client.watch_prefix_response(
                prefix, start_revision=ask, progress_notify=True
            )
        except DOWN as exc:
            with contextlib.suppress(Exception):
                client.close()
            self._fail(f"watch {prefix}", exc)
        return EtcdWatch(self.urls, client, it, cancel, prefix, start_revision)

    def compact(self, revision: int) -> None:
        """Compact history up to ``revision``. Idempotent: an already compacted revision is
        fine. A future revision raises ``StoreUnavailable`` (etcd refuses it)."""
        req = etcdrpc.CompactionRequest(revision=revision, physical=True)
        try:
            self._unary(f"compact {revision}", lambda c: c.kvstub.Compact(req, c.timeout))
        except Compacted:
            return

    def __enter__(self) -> EtcdKV:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the shared client. Idempotent; the object stays usable (reconnects lazily)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                client.close()

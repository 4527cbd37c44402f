"""How ``controller/store/etcd.py``'s etcd client fails, in heddle's terms: every client or
gRPC failure becomes ``StoreUnavailable`` naming the URL(s) (retrying may help), a refusal
(permission denied, unauthenticated) its subclass ``StoreRefused`` (retrying cannot help: the
identity may not do that), a compacted revision ``Compacted`` (start again from a listing).
Shared by the unary calls and the watch streams (``controller/store/etcd_watch.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
from pyetcd import exceptions as etcd_exc

from controller.model.errors import StoreRefused, StoreUnavailable
from controller.store.kv import Compacted

#: What the client raises when etcd is down ("Trying to use a failed node" is a ValueError).
DOWN = (grpc.RpcError, etcd_exc.Etcd3Exception, ValueError)
_REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
_FAILED_NODE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
)


def _is_compacted(exc: grpc.RpcError) -> bool:
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    return code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details


def raise_store_error(
    urls: Sequence[str], what: str, exc: BaseException, client: Any = None
) -> NoReturn:
    """Raise ``exc`` (from the client at ``urls``, doing ``what``) as ``Compacted``,
    ``StoreRefused`` or ``StoreUnavailable``. With ``client``, a member that failed
    (unavailable, deadline, internal) is marked so the next call fails over to another."""
    if isinstance(exc, etcd_exc.RevisionCompactedError):
        raise Compacted(exc.compacted_revision) from None
    if isinstance(exc, grpc.RpcError):
        if _is_compacted(exc):
            raise Compacted(0) from None
        code = exc.code() if hasattr(exc, "code") else None
        if client is not None and code in _FAILED_NODE:
            with contextlib.suppress(Exception):  # fail over to another member next time
                client.endpoint_in_use.fail()
                client._clear_old_stubs()
        text = exc.details() if hasattr(exc, "details") else str(exc)
        detail = f"{getattr(code, 'name', code)}: {text}"
        if code in _REFUSED:
            raise StoreRefused(
                f"etcd at {','.join(urls)} refused {what}: {text} (this identity may not do that)"
            ) from None
    else:
        detail = f"{type(exc).__name__}: {exc}"
    raise StoreUnavailable(f"etcd at {','.join(urls)}: {what} failed: {detail}") from None

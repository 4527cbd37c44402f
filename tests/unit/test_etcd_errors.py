"""How the etcd client's failures reach heddle (``controller/store/etcd_errors.py``): which
error, whether it says retrying can help, and that a failed member is marked for fail-over.
The integration tier meets the same errors from a real etcd (tests/integration/test_tls.py,
test_access.py, test_kv_contract.py)."""

from __future__ import annotations

import grpc
import pytest

from controller.model.errors import StoreRefused, StoreUnavailable
from controller.store.etcd_errors import raise_store_error
from controller.store.kv import Compacted

URLS = ("http://10.0.0.1:2379", "http://10.0.0.2:2379")


class RpcFailure(grpc.RpcError):
    """What a grpc stub raises: a status code and its details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Member:
    def __init__(self) -> None:
        self.failed = False

    def fail(self) -> None:
        self.failed = True


class Client:
    """The two things of ``MultiEndpointEtcd3Client`` that fail-over touches."""

    def __init__(self) -> None:
        self.endpoint_in_use = Member()
        self.stubs_cleared = False

    def _clear_old_stubs(self) -> None:
        self.stubs_cleared = True


def test_an_unavailable_member_is_store_unavailable_and_failed_over() -> None:
    client = Client()
    with pytest.raises(StoreUnavailable, match=r"10.0.0.1:2379,http://10.0.0.2.*put x.*UNAVAIL"):
        raise_store_error(URLS, "put x", RpcFailure(grpc.StatusCode.UNAVAILABLE, "down"), client)
    assert client.endpoint_in_use.failed and client.stubs_cleared


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED]
)
def test_a_refusal_says_the_identity_may_not(code: grpc.StatusCode) -> None:
    client = Client()
    with pytest.raises(StoreRefused, match=r"refused put x: no.*may not do that"):
        raise_store_error(URLS, "put x", RpcFailure(code, "no"), client)
    assert not client.endpoint_in_use.failed  # the member is fine: the identity is not


def test_a_compacted_revision_is_compacted() -> None:
    exc = RpcFailure(
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
    )
    with pytest.raises(Compacted):
        raise_store_error(URLS, "watch /heddle/", exc)


def test_anything_else_is_store_unavailable_naming_its_type() -> None:
    with pytest.raises(StoreUnavailable, match="ValueError: Trying to use a failed node"):
        raise_store_error(URLS, "get x", ValueError("Trying to use a failed node"))
    assert not issubclass(StoreUnavailable, StoreRefused)

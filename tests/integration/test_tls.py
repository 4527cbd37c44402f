"""``EtcdKV`` over TLS against an etcd that requires client certificates (--client-cert-auth)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.lab.etcd_server import ETCD_BINARY, EtcdServer, ServerTLS, make_test_pki
from controller.model.errors import StoreUnavailable
from controller.store.etcd import EtcdKV, TLSFiles
from controller.store.kv import Put, Txn

pytestmark = pytest.mark.skipif(not Path(ETCD_BINARY).exists(), reason=f"{ETCD_BINARY} missing")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdServer, ServerTLS]]:
    base = tmp_path_factory.mktemp("tls")
    pki = make_test_pki(base / "pki")
    server = EtcdServer(base / "etcd", tls=pki)
    try:
        server.start()
        yield server, pki
    finally:
        server.stop()


def test_client_certificate_works(tls_server: tuple[EtcdServer, ServerTLS]) -> None:
    server, pki = tls_server
    assert server.url.startswith("https://")
    kv = EtcdKV([server.url], TLSFiles(str(pki.ca_cert), str(pki.client_cert), str(pki.client_key)))
    try:
        rev = kv.commit(Txn(success=(Put("/tls/k", b"v"),))).revision
        got = kv.get("/tls/k")
        assert got is not None and got.value == b"v" and got.mod_revision == rev
        stream = kv.watch("/tls/", rev)
        try:
            batch = next(iter(stream))
            assert [e.kv.key for e in batch.events] == ["/tls/k"]
        finally:
            stream.cancel()
    finally:
        kv.close()


def test_without_client_certificate_is_unavailable(
    tls_server: tuple[EtcdServer, ServerTLS],
) -> None:
    server, pki = tls_server
    kv = EtcdKV([server.url], TLSFiles(str(pki.ca_cert)), timeout=3.0)
    try:
        with pytest.raises(StoreUnavailable, match=server.url):
            kv.get("/tls/k")
    finally:
        kv.close()


def test_plaintext_against_tls_is_unavailable(tls_server: tuple[EtcdServer, ServerTLS]) -> None:
    server, _ = tls_server
    kv = EtcdKV([server.url.replace("https://", "http://")], timeout=3.0)
    try:
        with pytest.raises(StoreUnavailable):
            kv.get("/tls/k")
    finally:
        kv.close()


def test_cli_over_tls(tls_server: tuple[EtcdServer, ServerTLS]) -> None:
    """The operator's path: ``heddle --etcd https://... --cacert --cert --key``."""
    import json
    import subprocess
    import sys

    server, pki = tls_server
    base = [sys.executable, "-m", "controller", "--etcd", server.url, "--cacert", str(pki.ca_cert)]
    auth = ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    r = subprocess.run(
        [*base, *auth, "-o", "json", "network", "create", "tls-net", "--subnet", "10.77.0.0/24"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "tls-net"
    r = subprocess.run([*base, "network", "ls"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "etcd unavailable" in r.stderr  # no client certificate

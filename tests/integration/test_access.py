"""Per-host etcd identities on a real etcd with TLS client certificates and authentication on:
``apply_access`` is idempotent, a host identity writes only what ``host_grants`` allows (its own
records, endpoints, addresses) and is refused everything else with ``StoreRefused``, the
operator writes everything, and the CLI says "refused" (exit 1) rather than "unavailable"."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.cli.parser import REFUSED
from controller.lab.etcd_server import (
    ETCD_BINARY,
    EtcdServer,
    ServerTLS,
    identity_files,
    make_test_pki,
)
from controller.model.errors import StoreRefused
from controller.store import keys
from controller.store.access import OPERATOR_USER, plan_access
from controller.store.etcd import EtcdKV, TLSFiles
from controller.store.etcd_access import apply_access
from controller.store.kv import Delete, Put, Txn

pytestmark = pytest.mark.skipif(not Path(ETCD_BINARY).exists(), reason=f"{ETCD_BINARY} missing")

IDENTITIES = ("root", "h1", "h2", OPERATOR_USER)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdServer, Path]]:
    base = tmp_path_factory.mktemp("access")
    pki = make_test_pki(base / "pki", identities=IDENTITIES)
    server = EtcdServer(base / "etcd", tls=pki)
    try:
        server.start()
        with _kv(server, pki, "root") as root:
            assert apply_access(root, plan_access(["h1", "h2"]))  # a first run changes things
        yield server, base / "pki"
    finally:
        server.stop()


def _kv(server: EtcdServer, pki: ServerTLS | Path, name: str) -> EtcdKV:
    d = pki if isinstance(pki, Path) else pki.ca_cert.parent
    ca, cert, key = identity_files(d, name)
    return EtcdKV([server.url], TLSFiles(str(ca), str(cert), str(key)))


def test_apply_twice_changes_nothing(secured: tuple[EtcdServer, Path]) -> None:
    server, pki = secured
    with _kv(server, pki, "root") as root:
        assert apply_access(root, plan_access(["h1", "h2"])) == []
        # a new host later: only its role and user are added
        assert apply_access(root, plan_access(["h1", "h2", "h3"])) == [
            "role heddle-host-h3 added",
            *(
                f"role heddle-host-h3: {g}"
                for g in sorted(plan_access(["h3"]).roles["heddle-host-h3"])
            ),
            "user h3 added",
            "user h3: role heddle-host-h3",
        ]


OWN = (
    keys.host("h1"),
    keys.alive("h1"),
    keys.status("h1"),
    keys.ROOT + "docker/h1/endpoints/e1",
    keys.endpoint("blue", "e1"),
    keys.ipam("blue", "10.0.0.5"),
    keys.placement("h1", "blue", "e1"),
)
FOREIGN = (
    keys.host("h2"),
    keys.alive("h2"),
    keys.status("h2"),
    keys.ROOT + "docker/h2/endpoints/e1",
    keys.placement("h2", "blue", "e1"),
    keys.LAYOUT,
    keys.network("blue"),
    keys.vni(100),
    "/other/key",
)


@pytest.mark.parametrize("key", OWN)
def test_a_host_writes_its_own_records(secured: tuple[EtcdServer, Path], key: str) -> None:
    server, pki = secured
    with _kv(server, pki, "h1") as h1:
        assert h1.commit(Txn(success=(Put(key, b"{}"),))).succeeded
        assert h1.get(key) is not None
        assert h1.commit(Txn(success=(Delete(key),))).succeeded


@pytest.mark.parametrize("key", FOREIGN)
def test_a_host_is_refused_everything_else(secured: tuple[EtcdServer, Path], key: str) -> None:
    server, pki = secured
    with _kv(server, pki, "h1") as h1, _kv(server, pki, OPERATOR_USER) as op:
        if key.startswith("/heddle/"):
            op.commit(Txn(success=(Put(key, b"{}"),)))
        with pytest.raises(StoreRefused, match="refused"):
            h1.commit(Txn(success=(Put(key, b"forged"),)))
        with pytest.raises(StoreRefused):
            h1.commit(Txn(success=(Delete(key),)))
        if key.startswith("/heddle/"):
            got = op.get(key)
            assert got is not None and got.value == b"{}"  # untouched
            assert h1.get(key) is not None  # but readable: the agent reads everything
            op.commit(Txn(success=(Delete(key),)))


def test_a_txn_with_one_forbidden_op_writes_nothing(secured: tuple[EtcdServer, Path]) -> None:
    server, pki = secured
    with _kv(server, pki, "h1") as h1:
        with pytest.raises(StoreRefused):
            h1.commit(Txn(success=(Put(keys.status("h1"), b"{}"), Put(keys.status("h2"), b"x"))))
        assert h1.get(keys.status("h1")) is None


def test_an_unknown_identity_is_refused(secured: tuple[EtcdServer, Path]) -> None:
    server, pki = secured
    # CN "heddle": no such etcd user
    with _kv(server, pki, "client") as stranger, pytest.raises(StoreRefused):
        stranger.list(keys.ROOT)


def test_cli_says_refused_not_unavailable(secured: tuple[EtcdServer, Path]) -> None:
    server, pki = secured
    ca, cert, key = identity_files(pki, "h1")
    proc = subprocess.run(
        [sys.executable, "-m", "controller", "--etcd", server.url, "--cacert", str(ca),
         "--cert", str(cert), "--key", str(key),
         "network", "create", "blue", "--subnet", "10.9.0.0/24"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == REFUSED, proc.stderr
    assert "etcd refused" in proc.stderr and "identity may not" in proc.stderr
    ca, cert, key = identity_files(pki, "root")
    apply = [sys.executable, "-m", "controller", "--etcd", server.url, "--cacert", str(ca),
             "--cert", str(cert), "--key", str(key), "access", "apply", "--host", "h1",
             "--host", "h2", "--host", "h3"]  # fmt: skip
    # the first run may add h3 (unless an earlier test of this module did); the second is
    # told that nothing changed
    for _ in range(2):
        proc = subprocess.run(apply, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "unchanged"

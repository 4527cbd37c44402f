"""Fixtures for tests against a real etcd: a private server per test, and an ``EtcdKV`` on it.

Each server gets its own temporary data dir and free ports and is stopped by PID afterwards,
even when the test fails. Tests are skipped (with the reason) only if /usr/bin/etcd is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.lab.etcd_server import ETCD_BINARY, EtcdServer
from controller.store.etcd import EtcdKV

needs_etcd = pytest.mark.skipif(
    not Path(ETCD_BINARY).exists(), reason=f"{ETCD_BINARY} missing (apt install etcd-server)"
)


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh single-member etcd (progress notifications every second), stopped afterwards."""
    if not Path(ETCD_BINARY).exists():
        pytest.skip(f"{ETCD_BINARY} missing (apt install etcd-server)")
    server = EtcdServer(tmp_path / "etcd")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_kv(etcd_server: EtcdServer) -> Iterator[EtcdKV]:
    """An ``EtcdKV`` on ``etcd_server``, closed afterwards."""
    kv = EtcdKV([etcd_server.url], timeout=5.0)
    try:
        yield kv
    finally:
        kv.close()

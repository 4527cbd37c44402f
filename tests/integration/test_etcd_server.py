"""The lab's etcd runner: a port it picked that someone else took before etcd bound it is
picked again (the free-port race that once failed a CI run); ports given are never changed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from controller.lab.etcd_server import ETCD_BINARY, EtcdServer

pytestmark = pytest.mark.skipif(
    not Path(ETCD_BINARY).exists(), reason=f"{ETCD_BINARY} missing (apt install etcd-server)"
)


def _hold(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_picked_port_taken_meanwhile_is_picked_again(tmp_path: Path) -> None:
    server = EtcdServer(tmp_path / "etcd")
    taken = server.peer_port
    with _hold(taken):
        try:
            server.start()
            assert server.healthy() and server.peer_port != taken
        finally:
            server.stop()


def test_a_given_port_that_is_taken_fails_clearly(tmp_path: Path) -> None:
    with _hold(0) as held:
        port = held.getsockname()[1]
        server = EtcdServer(tmp_path / "etcd", peer_port=port)
        try:
            with pytest.raises(RuntimeError, match="address already in use"):
                server.start()
            assert server.peer_port == port
        finally:
            server.stop()

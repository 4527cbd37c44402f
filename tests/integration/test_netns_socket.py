"""``in_netns`` against the real kernel (root only): the calling thread works inside the
namespace and is back in its own one afterwards, whatever happened in between.

Each test makes its own namespace ``hns-<random>`` and deletes it on teardown, even on failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import netns

from controller.dataplane.netns_socket import in_netns, socket_in, sysctl

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def _here() -> str:
    """This thread's network namespace (its inode, as ``nsfs`` names it)."""
    return os.readlink("/proc/thread-self/ns/net")


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"hns-{uuid.uuid4().hex[:6]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def test_runs_inside_and_comes_back(ns: str) -> None:
    home = _here()
    inside = in_netns(ns, _here)
    assert inside != home
    assert inside == f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]"
    assert _here() == home


def test_comes_back_when_fn_raises(ns: str) -> None:
    home = _here()

    def boom() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        in_netns(ns, boom)
    assert _here() == home


def test_a_socket_keeps_the_namespace_it_was_made_in(ns: str) -> None:
    """Two sockets bound to the same loopback port: possible only in two namespaces."""
    here = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    there = socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        here.bind(("127.0.0.1", 0))
        in_netns(ns, lambda: subprocess.run(["ip", "link", "set", "lo", "up"], check=True))
        there.bind(here.getsockname())
    finally:
        here.close()
        there.close()
    assert sysctl(ns, "net.ipv4.ip_forward") == "0"


def test_missing_namespace_and_a_file_that_is_none(tmp_path: Path) -> None:
    home = _here()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        in_netns(f"hns-absent-{uuid.uuid4().hex[:6]}", _here)
    plain = tmp_path / "not-a-netns"
    plain.write_text("")
    with pytest.raises(OSError) as err:
        in_netns(str(plain), _here)
    assert not isinstance(err.value, FileNotFoundError)
    assert _here() == home


def test_nested_calls_unwind_in_order(ns: str, tmp_path: Path) -> None:
    home = _here()
    other = f"hns-{uuid.uuid4().hex[:6]}"
    netns.create(other)
    try:
        seen = in_netns(ns, lambda: (_here(), in_netns(other, _here), _here()))
    finally:
        netns.remove(other)
    assert seen[0] == seen[2] != seen[1]
    assert _here() == home

"""The ``heddle`` CLI against a real etcd: every refusal exits non-zero, names the problem and
leaves etcd unchanged; the happy paths print tables and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from controller.model import codec
from controller.model.records import Host
from controller.store import keys
from controller.store.kv import KV, Put, Txn

Run = Callable[..., subprocess.CompletedProcess[str]]


def dump(kv: KV) -> dict[str, bytes]:
    return {i.key: i.value for i in kv.list(keys.ROOT).items}


@pytest.fixture
def heddle(etcd_server: object) -> Run:
    url: str = etcd_server.url  # type: ignore[attr-defined]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller", "--etcd", url, *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


@pytest.fixture
def seeded(etcd_kv: KV, heddle: Run) -> KV:
    for name, vtep in (("h1", "172.31.253.1"), ("h2", "172.31.253.2")):
        etcd_kv.commit(
            Txn(success=(Put(keys.host(name), codec.encode_host(Host(name, vtep)).encode()),))
        )
    r = heddle(
        "network",
        "create",
        "blue",
        "--subnet",
        "10.1.0.0/24",
        "--vni",
        "100",
        "--gateway",
        "10.1.0.1",
    )
    assert r.returncode == 0, r.stderr
    r = heddle("endpoint", "create", "blue", "--host", "h1", "--ip", "10.1.0.9", "--id", "fixed")
    assert r.returncode == 0, r.stderr
    return etcd_kv


REFUSALS = [
    (("network", "create", "Bad_Name", "--subnet", "10.2.0.0/24"), "name"),
    (("network", "create", "n2", "--subnet", "10.2.0.0/33"), "CIDR"),
    (("network", "create", "n2", "--subnet", "not-a-cidr"), "CIDR"),
    (("network", "create", "n2", "--subnet", "10.2.0.1/24"), "host bits"),
    (("network", "create", "n2", "--subnet", "10.2.0.0/31"), "/30"),
    (("network", "create", "n2", "--subnet", "10.2.0.0/24", "--gateway", "10.3.0.1"), "gateway"),
    (("network", "create", "n2", "--subnet", "10.2.0.0/24", "--vni", "0"), "vni"),
    (("network", "create", "n2", "--subnet", "10.2.0.0/24", "--vni", "16777216"), "vni"),
    (("network", "create", "blue", "--subnet", "10.2.0.0/24"), "already exists"),
    (("network", "create", "n2", "--subnet", "10.2.0.0/24", "--vni", "100"), "VNI 100"),
    (("network", "rm", "blue"), "--force"),
    (("network", "rm", "nonet"), "does not exist"),
    (("network", "show", "nonet"), "does not exist"),
    (("endpoint", "create", "nonet", "--host", "h1"), "does not exist"),
    (("endpoint", "create", "blue", "--host", "h9"), "not registered"),
    (("endpoint", "create", "blue", "--host", "h1", "--ip", "10.9.0.2"), "outside"),
    (("endpoint", "create", "blue", "--host", "h1", "--ip", "10.1.0.1"), "gateway"),
    (("endpoint", "create", "blue", "--host", "h1", "--ip", "10.1.0.255"), "broadcast"),
    (("endpoint", "create", "blue", "--host", "h1", "--ip", "10.1.0.9"), "already in use"),
    (("endpoint", "create", "blue", "--host", "h1", "--ifname", "x" * 16), "ifname"),
    (("endpoint", "rm", "blue", "nope"), "does not exist"),
    (("network", "create", "n2", "--subnet", "fd00::/64", "--subnet", "fd01::/64"), "one IPv6"),
    (("network", "create", "n2", "--subnet", "fd00::1/64"), "IPv6 CIDR"),
    (("network", "create", "n2", "--subnet", "FD00::/64"), "canonically"),
    (("network", "create", "n2", "--subnet", "fd00::/64", "--mtu", "1279"), "mtu"),
    (("endpoint", "create", "blue", "--host", "h1", "--ip", "fd00::5"), "no such subnet"),
]


@pytest.mark.parametrize(("argv", "needle"), REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_refusals_change_nothing(
    seeded: KV, heddle: Run, argv: tuple[str, ...], needle: str
) -> None:
    before = dump(seeded)
    r = heddle(*argv)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert needle in r.stderr and r.stderr.startswith("heddle: error:")
    assert "Traceback" not in r.stderr
    assert dump(seeded) == before


def test_exhausted_pool_is_a_clear_error(seeded: KV, heddle: Run) -> None:
    assert heddle("network", "create", "tiny", "--subnet", "10.5.0.0/30").returncode == 0
    for _ in range(2):
        assert heddle("endpoint", "create", "tiny", "--host", "h2").returncode == 0
    before = dump(seeded)
    r = heddle("endpoint", "create", "tiny", "--host", "h2")
    assert r.returncode == 1 and "no free address" in r.stderr
    assert dump(seeded) == before


def test_happy_path_tables_and_json(seeded: KV, heddle: Run) -> None:
    r = heddle("-o", "json", "endpoint", "create", "blue", "--host", "h2", "--netns", "c2")
    assert r.returncode == 0, r.stderr
    ep = json.loads(r.stdout)
    assert ep["ip"] == "10.1.0.2" and ep["mac"] == "02:64:0a:01:00:02" and ep["netns"] == "c2"
    listed = json.loads(heddle("-o", "json", "endpoint", "ls", "blue").stdout)
    assert {e["id"] for e in listed} == {"fixed", ep["id"]}
    table = heddle("network", "ls").stdout
    assert table.splitlines()[0].split() == ["NAME", "VNI", "SUBNET", "GATEWAY", "MTU", "EGRESS"]
    assert "blue" in table and "100" in table
    hosts = json.loads(heddle("-o", "json", "host", "ls").stdout)
    assert [(h["name"], h["alive"]) for h in hosts] == [("h1", False), ("h2", False)]
    r = heddle("endpoint", "rm", "blue", ep["id"])
    assert r.returncode == 0 and "released 10.1.0.2" in r.stdout
    assert seeded.get(keys.ipam("blue", "10.1.0.2")) is None
    r = heddle("network", "rm", "blue", "--force")
    assert r.returncode == 0, r.stderr
    assert not [k for k in dump(seeded) if "blue" in k or k.endswith("/vnis/100")]


def test_dual_stack_and_ipv6_only_networks_from_the_cli(seeded: KV, heddle: Run) -> None:
    """``--subnet`` repeats (one per family), ``--ip`` too; an endpoint gets one address of
    each family in one transaction, and ``endpoint rm`` releases both."""
    r = heddle("-o", "json", "network", "create", "ds", "--subnet", "10.6.0.0/24",
               "--subnet", "fd00:6::/64", "--gateway", "fd00:6::1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    net = json.loads(r.stdout)
    assert (net["subnet"], net["subnet6"], net["gateway6"]) == (
        "10.6.0.0/24",
        "fd00:6::/64",
        "fd00:6::1",
    )
    r = heddle("-o", "json", "endpoint", "create", "ds", "--host", "h1")
    assert r.returncode == 0, r.stderr
    ep = json.loads(r.stdout)
    assert (ep["ip"], ep["ip6"]) == ("10.6.0.1", "fd00:6::2")
    r = heddle("endpoint", "create", "ds", "--host", "h1", "--ip", "10.6.0.9")
    assert r.returncode == 1 and "request an address of each family" in r.stderr
    r = heddle("-o", "json", "endpoint", "create", "ds", "--host", "h2",
               "--ip", "fd00:6::9", "--ip", "10.6.0.9")  # fmt: skip
    assert r.returncode == 0 and json.loads(r.stdout)["ip6"] == "fd00:6::9", r.stderr
    assert heddle("network", "create", "v6", "--subnet", "fd00:7::/64").returncode == 0
    r = heddle("-o", "json", "endpoint", "create", "v6", "--host", "h2")
    assert json.loads(r.stdout)["ip6"] == "fd00:7::1" and json.loads(r.stdout)["ip"] is None
    r = heddle("endpoint", "rm", "ds", ep["id"])
    assert r.returncode == 0 and "released 10.6.0.1, fd00:6::2" in r.stdout
    assert seeded.get(keys.ipam("ds", "fd00:6::2")) is None
    assert "10.6.0.0/24,fd00:6::/64" in heddle("network", "ls").stdout


def test_unreachable_etcd_exit_code() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "controller", "--etcd", "http://127.0.0.1:9", "network", "ls"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3 and "etcd unavailable" in r.stderr

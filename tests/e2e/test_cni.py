"""``heddle-cni`` driven as a CNI runtime drives it: the executable with the specification's
environment and a network configuration on stdin, against the lab's agents (each serves CNI on
``LabAgents.cni_socket``). Conformance (ADD/CHECK/DEL/VERSION, bad input, a missing namespace, an
agent or etcd that does not answer), namespaces given as any path, cross-host traffic, chaining
with the reference ``tuning`` plugin, and concurrent ADDs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from controller.cni.install import install_plugin
from controller.desired import DesiredState
from controller.lab.probes import ping
from controller.lab.topology import Lab
from controller.store import keys

LAB_NETS = {"kernel": ("hcn", "172.31.206.0/24", "172.31.205.0/24")}
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "heddle-cni")
PLUGIN = ""  # the executable as `heddle cni plugin` writes it (the ``plugin`` fixture)
TUNING = "/usr/lib/cni/tuning"
NETWORK = "cnet"


def cni(
    command: str,
    config: dict[str, Any] | bytes,
    container: str = "",
    netns: str = "",
    ifname: str = "eth0",
    args: str = "",
    timeout: float = 60.0,
    plugin: str | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """Run a CNI plugin (default: heddle's) as a runtime does; (exit status, its JSON output
    or None)."""
    plugin = plugin or PLUGIN
    env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni"}
    for k, v in (("CNI_CONTAINERID", container), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname),
                 ("CNI_ARGS", args)):  # fmt: skip
        if v:
            env[k] = v
    stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
    proc = subprocess.run(
        [plugin], input=stdin, env=env, capture_output=True, timeout=timeout, check=False
    )
    out = proc.stdout.strip()
    return proc.returncode, (json.loads(out) if out else None)


@pytest.fixture(scope="module", autouse=True)
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """What a runtime runs: ``heddle-cni`` as ``heddle cni plugin`` writes it."""
    global PLUGIN
    path, _, _ = install_plugin(tmp_path_factory.mktemp("cni-bin"))
    PLUGIN = str(path)
    yield PLUGIN


def conf(lab: Lab, host: str, network: str = NETWORK, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": network, "type": "heddle",
            "socket": str(lab.agents.cni_socket(host)), **extra}  # fmt: skip


@pytest.fixture(scope="module")
def network(lab: Lab) -> Iterator[str]:
    kv = lab.kv()
    desired = DesiredState(kv)
    desired.create_network(NETWORK, "10.61.0.0/24", vni=6101, gateway="10.61.0.1")
    try:
        yield NETWORK
    finally:
        with contextlib.suppress(Exception):
            desired.remove_network(NETWORK, force=True)
        kv.close()


@pytest.fixture
def netns(lab: Lab) -> Iterator[Any]:
    """A factory of empty namespaces (``/run/netns/<prefix>-<name>``), removed afterwards."""
    made: list[str] = []

    def make(name: str) -> str:
        made.append(lab.add_netns(name))
        return f"/run/netns/{made[-1]}"

    yield make
    for n in made:
        lab.remove_netns(n)


def addresses(netns_path: str, ifname: str = "eth0") -> list[str]:
    out = subprocess.run(
        ["nsenter", f"--net={netns_path}", "ip", "-j", "addr", "show", "dev", ifname],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        return []
    return [f"{a['local']}/{a['prefixlen']}" for i in json.loads(out.stdout)
            for a in i["addr_info"] if a["family"] == "inet"]  # fmt: skip


def test_version_answers_without_the_agent() -> None:
    rc, out = cni("VERSION", {"cniVersion": "1.0.0"}, netns="dummy")
    assert rc == 0 and out is not None
    assert out["cniVersion"] == "1.0.0"
    assert {"0.4.0", "1.0.0", "1.1.0"} <= set(out["supportedVersions"])


def test_add_check_del_with_a_spec_conformant_result(lab: Lab, network: str, netns: Any) -> None:
    path = netns("cni-a")
    cfg = conf(lab, "h1", dns={"nameservers": ["10.61.0.53"]})
    rc, res = cni("ADD", cfg, "c0ffee01", path)
    assert rc == 0, res
    assert res is not None and res["cniVersion"] == "1.0.0"
    assert res["interfaces"] == [
        {"name": "eth0", "mac": res["interfaces"][0]["mac"], "sandbox": path}
    ]
    (ip,) = res["ips"]
    assert ip["gateway"] == "10.61.0.1" and ip["interface"] == 0
    assert ip["address"].startswith("10.61.0.") and ip["address"].endswith("/24")
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.61.0.1"}]
    assert res["dns"] == {"nameservers": ["10.61.0.53"]}
    assert addresses(path) == [ip["address"]], "ADD returned before the interface was ready"
    assert cni("CHECK", {**cfg, "prevResult": res}, "c0ffee01", path) == (0, None)
    # a repeated ADD (a runtime's retry) answers like the first
    assert cni("ADD", cfg, "c0ffee01", path) == (0, res)
    assert cni("DEL", {**cfg, "prevResult": res}, "c0ffee01", path) == (0, None)
    assert cni("DEL", cfg, "c0ffee01", path) == (0, None), "DEL is idempotent"
    rc, err = cni("CHECK", cfg, "c0ffee01", path)
    assert rc == 1 and err is not None and err["code"] == 102


def test_a_namespace_given_as_a_process_path(lab: Lab, network: str) -> None:
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        path = f"/proc/{holder.pid}/ns/net"
        deadline = time.monotonic() + 5
        while os.readlink(path) == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare did not make its namespace"
            time.sleep(0.01)
        cfg = conf(lab, "h2")
        rc, res = cni("ADD", cfg, "procns01", path)
        assert rc == 0, res
        assert res is not None and addresses(path) == [res["ips"][0]["address"]]
        assert cni("DEL", cfg, "procns01", path) == (0, None)
    finally:
        holder.kill()
        holder.wait()


def test_containers_on_two_hosts_ping_each_other(lab: Lab, network: str, netns: Any) -> None:
    a, b = netns("cni-x"), netns("cni-y")
    rc, ra = cni("ADD", conf(lab, "h1"), "pinga", a)
    assert rc == 0, ra
    rc, rb = cni("ADD", conf(lab, "h3"), "pingb", b)
    assert rc == 0, rb
    assert ra is not None and rb is not None
    try:
        target = rb["ips"][0]["address"].split("/")[0]
        assert ping(Path(a).name, target, count=3, interval=0.05, wait=1.0).ok
    finally:
        assert cni("DEL", conf(lab, "h1"), "pinga", a)[0] == 0
        assert cni("DEL", conf(lab, "h3"), "pingb", b)[0] == 0


def test_del_after_the_namespace_is_gone_releases_everything(
    lab: Lab, network: str, netns: Any
) -> None:
    path = netns("cni-gone")
    cfg = conf(lab, "h2")
    rc, res = cni("ADD", cfg, "gone01", path)
    assert rc == 0 and res is not None
    lab.remove_netns(Path(path).name)
    assert cni("DEL", cfg, "gone01", path) == (0, None)
    assert cni("DEL", cfg, "never-added", path) == (0, None)
    kv = lab.kv()
    try:
        ip = res["ips"][0]["address"].split("/")[0]
        assert kv.get(keys.ipam(NETWORK, ip)) is None, "DEL left the address taken"
    finally:
        kv.close()


def test_chaining_with_the_reference_tuning_plugin(lab: Lab, network: str, netns: Any) -> None:
    if not os.access(TUNING, os.X_OK):
        pytest.skip("containernetworking-plugins is not installed")
    path = netns("cni-tune")
    cfg = conf(lab, "h1")
    rc, res = cni("ADD", cfg, "tune01", path)
    assert rc == 0 and res is not None
    tuning = {"cniVersion": "1.0.0", "name": NETWORK, "type": "tuning",
              "sysctl": {"net.ipv4.conf.eth0.arp_ignore": "1"}, "prevResult": res}  # fmt: skip
    rc, tuned = cni("ADD", tuning, "tune01", path, plugin=TUNING)
    assert rc == 0, tuned
    assert tuned is not None and tuned["ips"] == res["ips"], "tuning lost heddle's result"
    got = subprocess.run(
        ["nsenter", f"--net={path}", "sysctl", "-n", "net.ipv4.conf.eth0.arp_ignore"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert got.stdout.strip() == "1"
    assert cni("CHECK", {**cfg, "prevResult": tuned}, "tune01", path) == (0, None)
    assert cni("DEL", {**tuning, "prevResult": tuned}, "tune01", path, plugin=TUNING)[0] == 0
    assert cni("DEL", cfg, "tune01", path) == (0, None)


def test_twenty_concurrent_adds_get_distinct_addresses(lab: Lab, network: str, netns: Any) -> None:
    paths = [netns(f"cni-p{i}") for i in range(20)]
    cfg = conf(lab, "h2")
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: cni("ADD", cfg, f"par{i:02d}", paths[i]), range(20)))
    try:
        assert all(rc == 0 for rc, _ in results), [r for r in results if r[0] != 0][:3]
        ips = [r["ips"][0]["address"] for _, r in results if r is not None]
        assert len(set(ips)) == 20, ips
        for path, ip in zip(paths, ips, strict=True):
            assert addresses(path) == [ip]
    finally:
        with ThreadPoolExecutor(20) as pool:
            dels = list(pool.map(lambda i: cni("DEL", cfg, f"par{i:02d}", paths[i]), range(20)))
        assert all(rc == 0 for rc, _ in dels)


_OK = b'{"cniVersion": "1.0.0", "name": "cnet", "type": "heddle"}'
BAD_INPUT = {  # id -> (stdin, environment, the error code)
    "not-json": (b"{not json", {}, 6),
    "version": (b'{"cniVersion": "9.9.9", "name": "cnet", "type": "heddle"}', {}, 1),
    "type": (b'{"cniVersion": "1.0.0", "name": "cnet", "type": "bridge"}', {}, 7),
    "unknown-network": (b'{"cniVersion": "1.0.0", "name": "no-such-net", "type": "heddle"}', {}, 7),
    "no-netns": (_OK, {"netns": ""}, 4),
    "missing-netns": (_OK, {"netns": "/run/netns/hcn-nothere"}, 3),
    "netns-not-a-namespace": (_OK, {"netns": "/etc/passwd"}, 4),
    "mac-arg": (_OK, {"args": "MAC=02:00:00:00:00:09"}, 2),
}


@pytest.mark.parametrize(("stdin", "env", "code"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_a_cni_error_and_writes_nothing(
    lab: Lab, network: str, netns: Any, stdin: bytes, env: dict[str, str], code: int
) -> None:
    cfg = json.loads(stdin) if stdin.startswith(b'{"') else None
    if cfg is not None:
        cfg["socket"] = str(lab.agents.cni_socket("h1"))
    path = env.get("netns", netns("cni-bad"))
    rc, err = cni("ADD", cfg if cfg is not None else stdin, "bad01", path, args=env.get("args", ""))
    assert rc == 1 and err is not None, err
    assert err["code"] == code, err
    assert err["msg"]
    kv = lab.kv()
    try:
        assert kv.get(keys.endpoint(NETWORK, "x")) is None
        left = [i.key for i in kv.list(keys.endpoints_of(NETWORK)).items]
        assert not left, f"a refused ADD left {left}"
    finally:
        kv.close()


def test_no_agent_or_no_etcd_is_an_error_not_a_hang(lab: Lab, network: str, netns: Any) -> None:
    path = netns("cni-down")
    cfg = {**conf(lab, "h1"), "socket": str(lab.workdir / "nobody.sock")}
    t0 = time.monotonic()
    rc, err = cni("ADD", cfg, "down01", path)
    assert rc == 1 and err is not None and err["code"] == 11, err
    assert time.monotonic() - t0 < 2.0
    lab.freeze_etcd()
    try:
        t0 = time.monotonic()
        rc, err = cni("ADD", conf(lab, "h1"), "down02", path, timeout=30.0)
        assert rc == 1 and err is not None and err["code"] == 11, err
        assert time.monotonic() - t0 < 15.0
    finally:
        lab.thaw_etcd()
    rc, err = cni("DEL", conf(lab, "h1"), "down02", path)
    assert rc == 0, err


def test_the_console_script_is_the_same_plugin(lab: Lab, network: str, netns: Any) -> None:
    assert shutil.which("heddle-cni", path=str(Path(sys.executable).parent)) is not None
    path = netns("cni-cs")
    cfg = conf(lab, "h1")
    rc, res = cni("ADD", cfg, "console01", path, plugin=CONSOLE_SCRIPT)
    assert rc == 0 and res is not None and addresses(path) == [res["ips"][0]["address"]]
    assert cni("DEL", cfg, "console01", path, plugin=CONSOLE_SCRIPT) == (0, None)


def test_an_endpoint_naming_the_hosts_own_namespace_is_refused(lab: Lab, network: str) -> None:
    """A record (any etcd client may write one) whose namespace is the host's own: the agent
    refuses it and reports why; no overlay address lands on the host."""
    h2 = lab.host("h2")
    kv = lab.kv()
    desired = DesiredState(kv)
    try:
        ep = desired.create_endpoint(NETWORK, "h2", netns=f"/run/netns/{h2.netns}",
                                     ifname="hdtrap0", endpoint_id="trap")  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            st = lab.etcd_http().status_of("h2")
            errors = [e for e in (st[0].get("errors") or []) if "host's own" in e] if st else []
            if errors or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert errors, f"h2 reported no refusal: {st}"
        assert addresses(f"/run/netns/{h2.netns}", "hdtrap0") == []
        desired.remove_endpoint(NETWORK, ep.id)
    finally:
        kv.close()

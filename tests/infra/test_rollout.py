"""The rollout, verified on booted hosts: ``ansible/site.yml`` converges, a second run changes
nothing, testinfra finds what the roles promise, and the rolled-out agents carry traffic between
endpoints on different hosts.

The order of the tests follows the operator's: converge, re-run, inspect, use. The cross-host
ping goes through everything the roles set up (etcd from the ``etcd`` role, agents from the
``heddle`` role under systemd, their config files); the endpoints live in network namespaces
inside the containers, as a container runtime's would on a VM.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from collections.abc import Sequence
from typing import Any

import pytest
import testinfra
from conftest import HOSTS, Rollout
from infra_lab import UNDERLAY

from controller.model.errors import StoreRefused
from controller.plan.ovsdb import phy_hwaddr
from controller.store import keys
from controller.store.etcd import EtcdKV, TLSFiles
from controller.store.kv import Put, Txn

NETWORK = "hin-blue"
OVERLAY_SUBNET = "172.31.227.0/24"


def heddle(rollout: Rollout, *args: str) -> Any:
    """The heddle CLI of this repository (on the test machine), against the lab's etcd."""
    proc = subprocess.run(
        [*rollout.cli(), "-o", "json", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"heddle {' '.join(args)}: {proc.stderr}"
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def host(rollout: Rollout, name: str) -> Any:
    return testinfra.get_host(f"ssh://{name}", ssh_config=str(rollout.lab.ssh_config))


def test_first_run_converges(rollout: Rollout) -> None:
    recap = rollout.first.recap
    assert sorted(recap) == list(HOSTS), rollout.first.output[-3000:]
    for name, (ok, changed, unreachable, failed) in recap.items():
        assert (unreachable, failed) == (0, 0), name
        assert changed > 0 and ok > 0, f"{name}: a first run on a fresh host must change it"


def test_second_run_changes_nothing(rollout: Rollout) -> None:
    recap = rollout.second.recap
    assert sorted(recap) == list(HOSTS), rollout.second.output[-3000:]
    changed = {name: counts[1] for name, counts in recap.items()}
    assert changed == dict.fromkeys(HOSTS, 0), rollout.second.changed_tasks()
    assert all(counts[3] == 0 for counts in recap.values())
    # ... and restarted nothing: the handler only fires on a change.
    first, second = rollout.agent_pids
    assert all(pid != "0" for pid in first.values()), first
    assert second == first


@pytest.mark.parametrize("name", HOSTS)
def test_packages_and_venv(rollout: Rollout, name: str) -> None:
    h = host(rollout, name)
    for pkg in ("python3-venv", "nftables", "iproute2"):
        assert h.package(pkg).is_installed, pkg
    assert h.package("etcd-server").is_installed  # baked into the image on every host
    venv_heddle = h.file("/opt/heddle/venv/bin/heddle")
    assert venv_heddle.exists and venv_heddle.mode & 0o111
    assert h.run("/opt/heddle/venv/bin/heddle --version").stdout.startswith("heddle ")
    # Offline: no way out of the lab, and no apt index was ever fetched.
    assert "default" not in h.check_output("ip route")
    assert not h.file("/var/lib/apt/lists").listdir() or all(
        f in ("lock", "partial", "auxfiles") for f in h.file("/var/lib/apt/lists").listdir()
    )
    # Installed from the copied wheelhouse with --no-index: the wheels are on the host.
    assert h.file("/opt/heddle/wheelhouse").is_directory
    ovs = h.service("openvswitch-switch")
    if rollout.scenario.backend == "ovs":
        assert h.package("openvswitch-switch").is_installed
        assert ovs.is_enabled and h.service("ovs-vswitchd").is_running
        assert h.check_output("ovs-vsctl br-exists br-phy && echo yes") == "yes"
    else:
        assert not ovs.is_enabled  # the openvswitch role only runs for the ovs backend
    assert any(w.startswith("heddle-") for w in h.file("/opt/heddle/wheelhouse").listdir())


@pytest.mark.parametrize("name", HOSTS)
def test_agent_service(rollout: Rollout, name: str) -> None:
    h = host(rollout, name)
    agent = h.service("heddle-agent")
    assert agent.is_running, h.run("journalctl -u heddle-agent --no-pager | tail -30").stdout
    assert agent.is_enabled
    unit = h.file("/etc/systemd/system/heddle-agent.service")
    assert unit.contains("^Before=docker.service$")
    assert unit.contains("--config /etc/heddle/agent.toml")
    # One agent process, run by systemd from the venv.
    assert len(h.process.filter(comm="heddle")) == 1


@pytest.mark.parametrize("name", HOSTS)
def test_agent_config(rollout: Rollout, name: str) -> None:
    h = host(rollout, name)
    f = h.file("/etc/heddle/agent.toml")
    assert (f.user, f.group, f.mode) == ("root", "root", 0o640)
    config = tomllib.loads(f.content_string)
    index = HOSTS.index(name) + 11
    expected: dict[str, Any] = {
        "host": name,
        "vtep": f"{UNDERLAY}.{index}",  # from host0's address (hin-c1, c2) or heddle_vtep (c3)
        "etcd": rollout.scenario.etcd_urls,
        "backend": rollout.scenario.backend,
        "resync_interval": 30.0,
        "plugin_socket": "/run/docker/plugins/heddle.sock",
        "cni_socket": "/run/heddle/cni.sock",
    }
    if rollout.scenario.backend == "ovs":
        expected |= {"ovs_datapath": "netdev", "underlay_dev": "host0"}
    if rollout.scenario.tls:
        tls = {"cacert": "etcd-ca.pem", "cert": "etcd-client.pem", "key": "etcd-client-key.pem"}
        expected |= {k: f"/etc/heddle/{v}" for k, v in tls.items()}
        key = h.file("/etc/heddle/etcd-client-key.pem")
        assert (key.user, key.mode) == ("root", 0o600)
    assert config == expected


@pytest.mark.parametrize("name", HOSTS)
def test_etcd_service(rollout: Rollout, name: str) -> None:
    """Members run etcd from the role's data directory; other hosts do not run it at all
    (the package is in their image, its unit stays disabled)."""
    h = host(rollout, name)
    etcd = h.service("etcd")
    if name not in rollout.scenario.etcd_members:
        assert not etcd.is_running and not etcd.is_enabled
        return
    assert etcd.is_running and etcd.is_enabled
    address = f"{UNDERLAY}.{HOSTS.index(name) + 11}"
    assert h.socket(f"tcp://{address}:2379").is_listening
    assert h.file("/var/lib/etcd/heddle/member").is_directory


def test_etcd_cluster_members(rollout: Rollout) -> None:
    """Every member of the inventory's etcd group joined one cluster, advertising the URLs the
    agents were configured with."""
    s = rollout.scenario
    ctl = "ETCDCTL_API=3 etcdctl --endpoints https://127.0.0.1:2379 -w json member list"
    if s.tls:
        ctl += " --cacert /etc/etcd/tls/ca.pem --cert /etc/etcd/tls/member.pem"
        ctl += " --key /etc/etcd/tls/member-key.pem"
    else:
        ctl = ctl.replace("https://", "http://")
    out = host(rollout, s.etcd_members[0]).check_output(ctl)
    members = json.loads(out)["members"]
    assert sorted(m["name"] for m in members) == sorted(s.etcd_members)
    assert sorted(u for m in members for u in m["clientURLs"]) == sorted(s.etcd_urls)


def test_every_host_alive_in_etcd(rollout: Rollout) -> None:
    deadline = time.monotonic() + 30
    while True:
        rows = {row["name"]: row for row in heddle(rollout, "host", "ls")}
        if all(rows.get(n, {}).get("alive") for n in HOSTS) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    missing = [n for n in HOSTS if not rows.get(n, {}).get("alive")]
    assert not missing, f"{rows}\n{_agent_diagnosis(rollout, missing)}"
    assert sorted(rows) == list(HOSTS), rows
    for i, name in enumerate(HOSTS, start=11):
        assert rows[name]["vtep"] == f"{UNDERLAY}.{i}"
        assert rows[name]["backend"] == rollout.scenario.backend


def test_the_rollout_turned_the_placement_index_on(rollout: Rollout) -> None:
    """The role ran ``heddle store upgrade`` once the agents ran: running it again finds the
    layout record written and nothing to index."""
    report = heddle(rollout, "store", "upgrade")
    assert report["layout_written"] is False and report["indexed"] == 0, report


def test_endpoints_ping_across_hosts(rollout: Rollout) -> None:
    """One endpoint per host in a namespace of its own; every endpoint pings every other one
    through the VXLAN tunnels the agents built between the containers."""
    lab = rollout.lab
    heddle(rollout, "network", "create", NETWORK, "--subnet", OVERLAY_SUBNET)
    try:
        ips = {}
        for name in HOSTS:
            lab.ssh(name, "ip netns add hin-ep")
            ips[name] = heddle(
                rollout, "endpoint", "create", NETWORK, "--host", name, "--netns", "hin-ep"
            )["ip"]
        for name, ip in ips.items():
            _wait(
                lambda name=name, ip=ip: (
                    f"{ip}/"
                    in lab.ssh(
                        name, "ip netns exec hin-ep ip -br address show eth0", check=False
                    ).stdout
                ),
                f"{name}: endpoint {ip} configured by the agent",
            )
        stale = _stale_tunnel_neighbours(rollout) if rollout.scenario.backend == "ovs" else {}
        for src in HOSTS:
            for dst, ip in ips.items():
                if dst == src:
                    continue
                cmd = f"ip netns exec hin-ep ping -c 1 -W 1 {ip}"
                _wait(
                    lambda src=src, cmd=cmd: lab.ssh(src, cmd, check=False).returncode == 0,
                    f"ping {src} -> {dst} ({ip})",
                    diagnose=lambda src=src, dst=dst: _data_plane(rollout, (src, dst)),
                )
        assert not stale, (
            "ovs netdev: tunnel neighbour entries still pointing at the underlay NIC's MAC "
            f"after the agents moved the VTEPs onto br-phy (flushed for the pings): {stale}"
        )
    finally:
        subprocess.run(
            [
                *rollout.cli(),
                "network",
                "rm",
                NETWORK,
                "--force",
            ],
            capture_output=True,
            timeout=30,
        )


def test_the_role_installs_the_cni_plugin_and_its_configuration_lists(rollout: Rollout) -> None:
    """``heddle_cni``: heddle-cni built into /opt/cni/bin and one configuration list per
    network, which a runtime can use as it is (an ADD and a DEL through it on a rolled-out
    host); a second run changes nothing."""
    if rollout.scenario.name != "etcd1":
        pytest.skip("checked once, in the etcd1 scenario (another playbook run)")
    heddle(rollout, "network", "create", "hin-cni", "--subnet", "172.31.226.0/24")
    extra = ("-e", "heddle_cni=true", "-e", '{"heddle_cni_networks": ["hin-cni"]}')
    try:
        rollout.run_again(*extra)
        name = HOSTS[0]
        h = host(rollout, name)
        executable = h.file("/opt/cni/bin/heddle-cni")
        assert executable.mode == 0o755
        assert executable.content[:4] == b"\x7fELF", "built on the host (heddle_cni_compiled)"
        conflist = json.loads(h.file("/etc/cni/net.d/hin-cni.conflist").content_string)
        plugin = conflist["plugins"][0]
        assert plugin == {"type": "heddle-cni", "network": "hin-cni", "host": name,
                          "socket": "/run/heddle/cni.sock"}  # fmt: skip
        config = json.dumps({"cniVersion": conflist["cniVersion"], "name": "hin-cni", **plugin})
        env = ("CNI_CONTAINERID=roll1 CNI_NETNS=/run/netns/hin-cni CNI_IFNAME=eth0 "
               "CNI_PATH=/opt/cni/bin")  # fmt: skip
        rollout.lab.ssh(name, "ip netns add hin-cni")
        add = rollout.lab.ssh(
            name, f"printf %s '{config}' | CNI_COMMAND=ADD {env} /opt/cni/bin/heddle-cni"
        )
        address = json.loads(add.stdout)["ips"][0]["address"]
        shown = rollout.lab.ssh(name, "ip netns exec hin-cni ip -br address show eth0").stdout
        assert address in shown
        rollout.lab.ssh(
            name, f"printf %s '{config}' | CNI_COMMAND=DEL {env} /opt/cni/bin/heddle-cni"
        )
        again = rollout.run_again(*extra)
        assert {n: c[1] for n, c in again.recap.items()} == dict.fromkeys(HOSTS, 0), (
            again.changed_tasks()
        )
    finally:
        rollout.lab.ssh(HOSTS[0], "ip netns del hin-cni", check=False)
        subprocess.run([*rollout.cli(), "network", "rm", "hin-cni", "--force"],
                       capture_output=True, timeout=30)  # fmt: skip


def test_config_change_restarts_only_the_agent(rollout: Rollout) -> None:
    """A changed setting rewrites agent.toml and restarts the agent through the handler, on
    every host, and touches nothing else. Runs last: it leaves the changed setting in place."""
    if rollout.scenario.name != "etcd1":
        pytest.skip("checked once, in the etcd1 scenario (another playbook run)")
    before = {n: rollout.agent_pid(n) for n in HOSTS}
    run = rollout.run_again(
        "-e", "heddle_resync_interval=20", "-e", "heddle_metrics_listen=127.0.0.1:9101"
    )
    assert {n: c[1] for n, c in run.recap.items()} == dict.fromkeys(HOSTS, 2), run.changed_tasks()
    assert run.changed_tasks() == [
        "TASK [heddle : Agent configuration]",
        "RUNNING HANDLER [heddle : Restart heddle-agent]",
    ]
    after = {n: rollout.agent_pid(n) for n in HOSTS}
    assert all(after[n] not in ("0", before[n]) for n in HOSTS), (before, after)
    for n in HOSTS:
        config = tomllib.loads(host(rollout, n).file("/etc/heddle/agent.toml").content_string)
        assert config["resync_interval"] == 20.0
        assert config["metrics"] == "127.0.0.1:9101"
    probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9101/healthz').status)"
    for n in HOSTS:
        _wait(
            lambda n=n: host(rollout, n).run(f'python3 -c "{probe}"').stdout.strip() == "200",
            f"{n}: the agent's /healthz on the address the role configured",
        )


def _agent_diagnosis(rollout: Rollout, hosts: list[str]) -> str:
    """Why an agent never showed up: every thread's stack (SIGUSR1) and its log, and what the
    host's kernel knows of the way to etcd."""
    cmds = [
        "journalctl -u heddle-agent --no-pager -n 150",
        "systemctl kill -s USR1 heddle-agent; sleep 1; journalctl -u heddle-agent --no-pager "
        "-o cat -n 600 | sed -n '/Sent signal SIGUSR1/,$p'",
        "ip -br address; ip route; ip neigh",
        "ss -tnp",
    ]
    return _run_on(rollout, hosts, cmds)


def _run_on(rollout: Rollout, hosts: Sequence[str], cmds: Sequence[str]) -> str:
    """Every command on every host, output under a header each: a failure message's body."""
    out = []
    for h in hosts:
        for cmd in cmds:
            res = rollout.lab.ssh(h, cmd, check=False, timeout=20)
            out.append(f"--- {h}: {cmd}\n{res.stdout}{res.stderr}")
    return "\n".join(out)


def _wait(ok: Any, what: str, timeout: float = 20, diagnose: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out: {what}\n{diagnose() if diagnose else ''}")
        time.sleep(0.3)


def _stale_tunnel_neighbours(rollout: Rollout) -> dict[str, list[str]]:
    """With the netdev datapath the agent moves the VTEP address from the underlay interface
    onto br-phy, whose MAC differs from the interface's. A peer whose OVS learned the VTEP's MAC
    before the move (any underlay traffic before the agent started: SSH, etcd) would keep sending
    tunnel packets to the old MAC until its ``tnl/neigh`` entry ages out (minutes); the agent
    announces the move with gratuitous ARP so that never happens. Entries found stale anyway are
    returned (the test fails, naming them) and flushed, so the pings still check the rest."""
    vteps = {f"{UNDERLAY}.{i}" for i in range(11, 11 + len(HOSTS))}
    stale: dict[str, list[str]] = {}
    for h in HOSTS:
        out = rollout.lab.ssh(h, "ovs-appctl tnl/neigh/show").stdout
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] in vteps and fields[1] != phy_hwaddr(fields[0]):
                stale.setdefault(h, []).append(f"{fields[0]} at {fields[1]}")
        if h in stale:
            rollout.lab.ssh(h, "ovs-appctl tnl/neigh/flush")
    return stale


def _data_plane(rollout: Rollout, hosts: tuple[str, ...]) -> str:
    """What the failure message needs: the endpoint's view and the hosts' data plane."""
    cmds = ["ip netns exec hin-ep ip -br address", "ip netns exec hin-ep ip neigh", "ip -br link"]
    if rollout.scenario.backend == "ovs":
        cmds += [
            "ovs-vsctl show",
            "ovs-ofctl dump-flows br-heddle",
            "ovs-ofctl dump-flows br-phy",
            "ovs-appctl tnl/neigh/show",
            "ovs-appctl ovs/route/show",
        ]
    else:
        cmds += ["bridge fdb show", "ip neigh"]
    return _run_on(rollout, hosts, cmds)


def test_a_host_identity_is_refused_another_hosts_records(rollout: Rollout) -> None:
    """With TLS the role turns etcd authentication on: an agent's certificate (CN = its host)
    may write its own status, never another host's; the operator's may write the networks."""
    if not rollout.scenario.tls:
        pytest.skip("etcd authentication is rolled out with TLS only (scenario etcd3-tls)")
    pki = rollout.pki
    urls = rollout.scenario.etcd_urls
    own = EtcdKV(urls, TLSFiles(str(pki / "ca.pem"), str(pki / "hin-c1.pem"),
                                str(pki / "hin-c1-key.pem")))  # fmt: skip
    with own:
        status = own.get(keys.status("hin-c1"))
        assert status is not None, "the agent publishes its status under its own identity"
        for key in (keys.status("hin-c2"), keys.host("hin-c2"), keys.network("forged")):
            with pytest.raises(StoreRefused):
                own.commit(Txn(success=(Put(key, b"{}"),)))

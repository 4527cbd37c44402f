"""Fixtures of the rollout tier: the real playbook, run over SSH into three booted Debian hosts.

One lab per session (booting is cheap, ~2 s; the rootfs is built once and cached, see
``infra_rootfs``): ``rollout`` boots it, builds the wheelhouse exactly as an operator would
(``pip wheel`` of this repository), runs ``ansible/site.yml`` twice and hands the recaps to the
tests; testinfra then inspects the hosts over the same SSH connections. The lab is torn down
after the session, also when a test or the rollout itself fails; problems met while tearing
down fail the session (a leaked bridge or mount would break the next run).

Root only: every test here skips with the reason otherwise. Names use the ``hin`` prefix and
the subnets 172.31.226.0/24 (underlay) and 172.31.227.0/24 (overlay), used by no other test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from infra_lab import UNDERLAY, Lab
from infra_rootfs import ensure_rootfs

REPO = Path(__file__).resolve().parents[2]
ROOT_REASON = "infra tests need root (debootstrap, systemd-nspawn, bridges, mounts)"
HOSTS = ("hin-c1", "hin-c2", "hin-c3")
_RECAP = re.compile(
    r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/infra/" in str(item.fspath) and item.fspath.basename != "test_vagrant.py":
            item.add_marker(pytest.mark.root)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason=ROOT_REASON))


@dataclass(frozen=True)
class PlaybookRun:
    output: str
    seconds: float
    # host -> (ok, changed, unreachable, failed)
    recap: dict[str, tuple[int, int, int, int]]

    def changed_tasks(self) -> list[str]:
        """The ``TASK [...]`` headers under which some host reported ``changed``: what a
        non-idempotent run should be blamed on."""
        blamed, task = [], ""
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                task = line.split("*")[0].strip()
            elif line.startswith("changed: ") and task not in blamed:
                blamed.append(task)
        return blamed


@dataclass(frozen=True)
class Scenario:
    """What the inventory asks for: the etcd members, and whether etcd speaks TLS with client
    certificates (to peers and to the agents)."""

    name: str
    etcd_members: tuple[str, ...]
    tls: bool
    backend: str = "kernel"  # ovs: Open vSwitch with the userspace (netdev) datapath

    @property
    def etcd_urls(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        return [f"{scheme}://{UNDERLAY}.{HOSTS.index(m) + 11}:2379" for m in self.etcd_members]


SCENARIOS = (
    Scenario("etcd1", ("hin-c1",), tls=False),
    Scenario("etcd3-tls", HOSTS, tls=True),
    # netdev: no openvswitch.ko on these machines (nor /proc/modules, so ovs-ctl skips modprobe)
    Scenario("ovs-netdev", ("hin-c1",), tls=False, backend="ovs"),
)


@dataclass(frozen=True)
class Rollout:
    scenario: Scenario
    lab: Lab
    pki: Path
    first: PlaybookRun
    second: PlaybookRun
    # host -> the agent's MainPID after the first and after the second run
    agent_pids: tuple[dict[str, str], dict[str, str]]
    workdir: Path
    wheelhouse: Path

    def agent_pid(self, host: str) -> str:
        return _main_pid(self.lab, host)

    def run_again(self, *extra: str) -> PlaybookRun:
        return run_playbook(self.lab, self.workdir, self.wheelhouse, *extra)

    def cli(self) -> list[str]:
        """The heddle CLI of this repository (on the test machine), against the lab's etcd."""
        argv = [str(REPO / ".venv/bin/heddle"), "--etcd", ",".join(self.scenario.etcd_urls)]
        if self.scenario.tls:
            argv += ["--cacert", str(self.pki / "ca.pem"), "--cert", str(self.pki / "client.pem")]
            argv += ["--key", str(self.pki / "client-key.pem")]
        return argv


def _inventory(scenario: Scenario, pki: Path) -> str:
    """Two hosts name their underlay interface, one gives its VTEP address, so both ways of
    configuring the heddle role are exercised. The ovs backend's netdev datapath needs both (the
    agent moves the address from the interface onto br-phy)."""
    members = "".join(
        f"{m} etcd_address={UNDERLAY}.{HOSTS.index(m) + 11}\n" for m in scenario.etcd_members
    )
    tls = ""
    if scenario.tls:
        # Each agent runs as its host (the member certificate: CN = the host name), etcd
        # authentication on, the test's CLI as the operator.
        tls = (
            f"etcd_tls=true\netcd_tls_src_dir={pki}\nheddle_etcd_tls=true\n"
            f"heddle_etcd_cacert_src={pki}/ca.pem\n"
            f"heddle_etcd_cert_src={pki}/{{{{ inventory_hostname }}}}.pem\n"
            f"heddle_etcd_key_src={pki}/{{{{ inventory_hostname }}}}-key.pem\n"
            f"heddle_etcd_auth=true\nheddle_etcd_root_cert_src={pki}/root.pem\n"
            f"heddle_etcd_root_key_src={pki}/root-key.pem\n"
        )
    if scenario.backend == "ovs":
        hosts = "".join(
            f"{h} heddle_vtep={UNDERLAY}.{i} heddle_underlay_interface=host0\n"
            for i, h in enumerate(HOSTS, start=11)
        )
        backend = "heddle_backend=ovs\nopenvswitch_datapath_type=netdev\n"
    else:
        hosts = (
            "hin-c1 heddle_underlay_interface=host0\n"
            "hin-c2 heddle_underlay_interface=host0\n"
            f"hin-c3 heddle_vtep={UNDERLAY}.13\n"
        )
        backend = ""
    return (
        f"[etcd]\n{members}\n"
        f"[heddle]\n{hosts}\n"
        "[all:vars]\n"
        "ansible_user=root\n"
        "ansible_python_interpreter=/usr/bin/python3\n"
        f"{tls}{backend}"
    )


def make_pki(d: Path) -> None:
    """A throw-away CA, a certificate per lab host (server and client use: etcd members talk
    to each other with it, SANs: its underlay address and 127.0.0.1; CN = the host name, so it
    is also the host's agent identity), the operator's client certificate (``client``, CN
    ``heddle-operator``: the test's CLI) and etcd's ``root`` (for ``heddle access apply``).
    The layout the etcd and heddle roles' READMEs ask for."""
    d.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem",
            "-out", "ca.pem", "-days", "1", "-subj", "/CN=hin-lab-ca")  # fmt: skip
    certs = {name: (f"IP:{UNDERLAY}.{i},IP:127.0.0.1", "serverAuth,clientAuth")
             for i, name in enumerate(HOSTS, start=11)}  # fmt: skip
    certs["client"] = ("", "clientAuth")
    certs["root"] = ("", "clientAuth")
    cns = {"client": "heddle-operator"}
    for name, (san, usage) in certs.items():
        ext = d / f"{name}.ext"
        ext.write_text((f"subjectAltName={san}\n" if san else "") + f"extendedKeyUsage={usage}\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-key.pem",
                "-out", f"{name}.csr", "-subj", f"/CN={cns.get(name, name)}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "1",
                "-extfile", ext.name)  # fmt: skip


def build_wheelhouse(dest: Path) -> None:
    """``pip wheel`` of heddle and its dependencies, as the heddle role's README tells operators.
    Built from a copy of the package sources, so the in-tree ``build/`` of a concurrent test run
    or developer is never touched."""
    src = dest.parent / "heddle-src"
    shutil.copytree(
        REPO / "controller", src / "controller", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
    subprocess.run(
        [str(REPO / ".venv/bin/pip"), "wheel", "-q", "--wheel-dir", str(dest), str(src)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    shutil.rmtree(src)


def run_playbook(lab: Lab, workdir: Path, wheelhouse: Path, *extra: str) -> PlaybookRun:
    """``ansible-playbook ansible/site.yml`` over the lab's SSH config, isolated from any
    ansible.cfg or ~/.ansible of the machine (an empty config file, private temp dirs)."""
    cfg = workdir / "ansible.cfg"
    cfg.touch()
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(cfg),
        "ANSIBLE_HOME": str(workdir / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        "ANSIBLE_SSH_ARGS": f"-F {lab.ssh_config}",
        "ANSIBLE_PIPELINING": "true",
        "ANSIBLE_HOST_KEY_CHECKING": "false",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORKS": "3",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            str(workdir / "inventory.ini"),
            str(REPO / "ansible/site.yml"),
            "-e",
            f"heddle_wheelhouse={wheelhouse}",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    recap = {m[1]: (int(m[2]), int(m[3]), int(m[4]), int(m[5])) for m in _RECAP.finditer(output)}
    run = PlaybookRun(output, time.monotonic() - started, recap)
    if proc.returncode != 0:
        pytest.fail(f"ansible-playbook exit {proc.returncode}:\n{output[-6000:]}")
    return run


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip(ROOT_REASON)
    started = time.monotonic()
    dest = tmp_path_factory.mktemp("hin-wheelhouse") / "wheels"
    build_wheelhouse(dest)
    TIMINGS["wheelhouse"] = time.monotonic() - started
    return dest


@pytest.fixture(scope="session", params=SCENARIOS, ids=[s.name for s in SCENARIOS])
def rollout(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path
) -> Iterator[Rollout]:
    """A booted lab with the scenario's inventory rolled out twice. One lab at a time: pytest
    finishes every test of one scenario and tears its lab down before the next one boots."""
    scenario: Scenario = request.param
    started = time.monotonic()
    ensure_rootfs()
    TIMINGS.setdefault("rootfs", time.monotonic() - started)
    work = tmp_path_factory.mktemp(f"hin-{scenario.name}")
    pki = work / "pki"
    if scenario.tls:
        make_pki(pki)
    (work / "inventory.ini").write_text(_inventory(scenario, pki))
    lab = Lab(ensure_rootfs(), work / "lab")
    try:
        started = time.monotonic()
        lab.up()
        TIMINGS[f"{scenario.name}: boot"] = time.monotonic() - started
        first = run_playbook(lab, work, wheelhouse)
        pids_first = {h: _main_pid(lab, h) for h in HOSTS}
        second = run_playbook(lab, work, wheelhouse)
        pids_second = {h: _main_pid(lab, h) for h in HOSTS}
        for n, run_ in (("first", first), ("second", second)):
            TIMINGS[f"{scenario.name}: {n} run"] = run_.seconds
            RECAPS[f"{scenario.name}: {n} run"] = {h: c[1] for h, c in run_.recap.items()}
        pids = (pids_first, pids_second)
        yield Rollout(scenario, lab, pki, first, second, pids, work, wheelhouse)
    finally:
        try:
            _keep_logs(lab, tmp_path_factory.mktemp(f"hin-{scenario.name}-logs"))
        finally:
            started = time.monotonic()
            problems = lab.down()
            TIMINGS[f"{scenario.name}: teardown"] = time.monotonic() - started
            shutil.rmtree(work, ignore_errors=True)
        if problems:
            pytest.fail(f"infra lab teardown: {problems}")


def _main_pid(lab: Lab, host: str) -> str:
    out = lab.ssh(host, "systemctl show --property MainPID --value heddle-agent")
    return out.stdout.strip()


def _keep_logs(lab: Lab, logs: Path) -> None:
    """Console and journal of every container, for diagnosis after the lab is gone. Best
    effort and bounded in time: a wedged host must not keep the lab from being torn down."""
    for c in lab.containers:
        (logs / f"{c.name}-console.log").write_text(lab.console(c))
        if c.process is None or c.process.poll() is not None:
            continue
        try:
            journal = lab.ssh(c.name, "journalctl --no-pager -n 300", check=False, timeout=15)
            (logs / f"{c.name}-journal.log").write_text(journal.stdout)
        except (subprocess.SubprocessError, OSError) as exc:
            (logs / f"{c.name}-journal.log").write_text(f"not collected: {exc}\n")


TIMINGS: dict[str, float] = {}
RECAPS: dict[str, dict[str, int]] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Durations and ``changed`` counts of the rollout, for the README and for regressions
    that make the lab slow."""
    if not TIMINGS:
        return
    tr = terminalreporter
    tr.section("heddle infra rollout")
    for what, seconds in TIMINGS.items():
        tr.write_line(f"{what}: {seconds:.1f} s")
    for what, changed in RECAPS.items():
        tr.write_line(f"{what}: changed " + ", ".join(f"{h}={n}" for h, n in changed.items()))

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
ETCD_HOST = "hin-c1"
ETCD_URL = f"http://{UNDERLAY}.11:2379"
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
class Rollout:
    lab: Lab
    first: PlaybookRun
    second: PlaybookRun
    wheelhouse_seconds: float
    lab_seconds: float


def _inventory() -> str:
    """Group ``etcd``: one member. Two hosts name their underlay interface, one gives its
    VTEP address, so both ways of configuring the role are exercised."""
    return (
        "[etcd]\n"
        f"{ETCD_HOST} etcd_address={UNDERLAY}.11\n\n"
        "[heddle]\n"
        "hin-c1 heddle_underlay_interface=host0\n"
        "hin-c2 heddle_underlay_interface=host0\n"
        f"hin-c3 heddle_vtep={UNDERLAY}.13\n\n"
        "[all:vars]\n"
        "ansible_user=root\n"
        "ansible_python_interpreter=/usr/bin/python3\n"
    )


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


def run_playbook(lab: Lab, workdir: Path, wheelhouse: Path) -> PlaybookRun:
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
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    recap = {m[1]: (int(m[2]), int(m[3]), int(m[4]), int(m[5])) for m in _RECAP.finditer(output)}
    run = PlaybookRun(output, time.monotonic() - started, recap)
    if proc.returncode != 0:
        pytest.fail(f"ansible-playbook exit {proc.returncode}:\n{output[-6000:]}")
    return run


@pytest.fixture(scope="session")
def rollout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollout]:
    if os.geteuid() != 0:
        pytest.skip(ROOT_REASON)
    work = tmp_path_factory.mktemp("hin-infra")
    rootfs = ensure_rootfs()
    started = time.monotonic()
    build_wheelhouse(work / "wheelhouse")
    wheelhouse_seconds = time.monotonic() - started
    (work / "inventory.ini").write_text(_inventory())
    lab = Lab(rootfs, work / "lab")
    try:
        started = time.monotonic()
        lab.up()
        lab_seconds = time.monotonic() - started
        first = run_playbook(lab, work, work / "wheelhouse")
        second = run_playbook(lab, work, work / "wheelhouse")
        yield Rollout(lab, first, second, wheelhouse_seconds, lab_seconds)
    finally:
        logs = tmp_path_factory.mktemp("hin-infra-logs")
        for c in lab.containers:
            (logs / f"{c.name}-console.log").write_text(lab.console(c))
        problems = lab.down()
        shutil.rmtree(work, ignore_errors=True)
        if problems:
            pytest.fail(f"infra lab teardown: {problems}")

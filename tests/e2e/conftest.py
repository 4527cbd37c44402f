"""Fixtures of the end-to-end tier: one real lab per test module and backend, endpoints cleaned
per test.

A module that uses the ``lab`` fixture runs once per backend in its ``LAB_BACKENDS`` (default
``("kernel",)``; ``kernel``, ``ovs`` or ``mixed``, see ``controller.lab.topology``): the fixture
is parametrized per module, so the same tests run unchanged on every backend, with ids
``[kernel]``, ``[ovs]``, ``[mixed]``. Each backend has its own lab prefix and management and
underlay subnets (``LABS``; a module may give its own in ``LAB_NETS``, same shape), distinct
from every other lab in the repository (``hld``: Docker e2e, ``hlt``/``hlk``: lab self-tests,
``hb*``: benchmarks, ``hlab``: a developer's ``heddle lab``), so labs never collide even when
modules run concurrently. The lab lives in a temporary workdir,
with agents resyncing every ``LAB_RESYNC_INTERVAL`` s of the module (default 2 s). It is torn
down even when tests fail; the agents' and OVS daemons' logs are copied to ``<tmp>/lab-logs``
first, for diagnosis. Root only: every test skips with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest

from controller.desired import DesiredState
from controller.lab.scenario import Scenario
from controller.lab.topology import Lab

ROOT_REASON = "e2e lab needs root (network namespaces, bridges, veth pairs, raw sockets)"
RESYNC_INTERVAL = 2.0
LABS = {  # backend -> (prefix, management subnet, underlay subnet)
    "kernel": ("hle", "172.31.250.0/24", "172.31.249.0/24"),
    "ovs": ("hlo", "172.31.234.0/24", "172.31.233.0/24"),
    "mixed": ("hlm", "172.31.232.0/24", "172.31.231.0/24"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.root)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason=ROOT_REASON))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``lab`` (module scope) over the module's ``LAB_BACKENDS``."""
    if "lab" in metafunc.fixturenames:
        backends = tuple(getattr(metafunc.module, "LAB_BACKENDS", ("kernel",)))
        unknown = [b for b in backends if b not in LABS]
        if unknown:
            raise pytest.UsageError(f"{metafunc.module.__name__}: unknown LAB_BACKENDS {unknown}")
        metafunc.parametrize("lab", backends, indirect=True, scope="module")


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip(ROOT_REASON)
    backend = getattr(request, "param", "kernel")
    if backend != "kernel" and shutil.which("ovs-vswitchd") is None:
        pytest.skip("the ovs backend needs Open vSwitch (apt-get install openvswitch-switch)")
    prefix, mgmt, underlay = {**LABS, **getattr(request.module, "LAB_NETS", {})}[backend]
    resync = float(getattr(request.module, "LAB_RESYNC_INTERVAL", RESYNC_INTERVAL))
    workdir = tmp_path_factory.mktemp(f"lab-{prefix}") / "lab"
    the_lab = Lab(workdir, prefix=prefix, mgmt_subnet=mgmt, underlay_subnet=underlay)
    secure = bool(getattr(request.module, "LAB_SECURE", False))
    agent_args = tuple(getattr(request.module, "LAB_AGENT_ARGS", ()))
    the_lab.up(
        hosts=3, backend=backend, resync_interval=resync, secure=secure, agent_args=agent_args
    )
    try:
        yield the_lab
    finally:
        logs = tmp_path_factory.mktemp(f"lab-logs-{prefix}")
        for log in [*workdir.glob("*.log"), *workdir.glob("ovs-*/*.log")]:
            name = log.name if log.parent == workdir else f"{log.parent.name}-{log.name}"
            with contextlib.suppress(OSError):
                shutil.copy(log, logs / name)
        the_lab.down()


@pytest.fixture(scope="module")
def desired(lab: Lab) -> Iterator[DesiredState]:
    kv = lab.kv()
    try:
        yield DesiredState(kv)
    finally:
        kv.close()


@pytest.fixture
def overlay(lab: Lab, desired: DesiredState) -> Iterator[Scenario]:
    """A fresh scenario per test; everything it created is removed after the test."""
    ov = Scenario(lab, desired)
    try:
        yield ov
    finally:
        ov.cleanup()

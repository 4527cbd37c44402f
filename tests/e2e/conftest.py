"""Fixtures of the end-to-end tier: one real lab per test module, endpoints cleaned per test.

A module gets its own lab (prefix ``LAB_PREFIX`` of the module, default ``hle``; management and
underlay subnets chosen per prefix so labs of different modules or a developer's ``heddle lab``
never collide) in a temporary workdir, with agents resyncing every 2 s. The lab is torn down
even when tests fail; the agents' logs are copied to ``<tmp>/lab-logs`` first, for diagnosis.
Root only: every test skips with the reason otherwise.
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
from controller.store.etcd import EtcdKV

ROOT_REASON = "e2e lab needs root (network namespaces, bridges, veth pairs, raw sockets)"
RESYNC_INTERVAL = 2.0
SUBNETS = {"hle": ("172.31.250.0/24", "172.31.249.0/24")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.root)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason=ROOT_REASON))


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip(ROOT_REASON)
    prefix = getattr(request.module, "LAB_PREFIX", "hle")
    mgmt, underlay = SUBNETS.get(prefix, ("172.31.252.0/24", "172.31.251.0/24"))
    workdir = tmp_path_factory.mktemp(f"lab-{prefix}") / "lab"
    the_lab = Lab(workdir, prefix=prefix, mgmt_subnet=mgmt, underlay_subnet=underlay)
    the_lab.up(hosts=3, resync_interval=RESYNC_INTERVAL)
    try:
        yield the_lab
    finally:
        logs = tmp_path_factory.mktemp("lab-logs")
        for log in workdir.glob("*.log"):
            with contextlib.suppress(OSError):
                shutil.copy(log, logs / log.name)
        the_lab.down()


@pytest.fixture(scope="module")
def desired(lab: Lab) -> Iterator[DesiredState]:
    kv = EtcdKV([lab.etcd_url])
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

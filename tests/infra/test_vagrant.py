"""The Vagrant lab's definition is valid: ``vagrant validate --ignore-provider`` (no VM boots
here; the provider plugins, libvirt and VirtualBox, are not needed to check the Vagrantfile and
its Ansible provisioner, whose playbook path Vagrant resolves)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import REPO


def test_vagrantfile_validates(tmp_path: Path) -> None:
    assert shutil.which("vagrant"), "vagrant is missing: apt-get install vagrant (./run setup)"
    env = {
        **os.environ,
        "VAGRANT_HOME": str(tmp_path / "home"),  # no ~/.vagrant.d state, no plugin lookups
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),  # no .vagrant/ in the repository
        "VAGRANT_CHECKPOINT_DISABLE": "1",  # no version check over the network
    }
    proc = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Vagrantfile validated successfully" in proc.stdout
    for node in ("heddle1", "heddle2", "heddle3"):
        assert f"{node}: Ignoring provider config" in proc.stdout

"""The cached Debian bookworm root filesystem the lab's containers boot from.

Built once with ``debootstrap`` and kept under ``/var/cache/heddle-infra/rootfs-<key>``, where
the key hashes everything that shapes the tree (suite, variant, mirror, package list, the
post-build fix-ups). A changed package list therefore builds a new tree instead of silently
booting a stale one; old trees are removed when a new one is complete.

The Debian packages the roles install are baked in with ``--include``: the containers have no
route out of the lab (no proxy, no host certificates), so the roles must find them already
present, exactly like an air-gapped site with a pre-seeded image. Services those packages enable
on installation (etcd, Open vSwitch) are disabled in the image: the roles decide where they run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

CACHE_DIR = Path(os.environ.get("HEDDLE_INFRA_CACHE", "/var/cache/heddle-infra"))
SUITE = "bookworm"
VARIANT = "minbase"
MIRROR = "http://deb.debian.org/debian"
# What the roles install (ansible/roles/*/defaults) plus what booting and managing a host over
# SSH needs (systemd as PID 1, sshd, python3 with apt bindings for Ansible's apt module).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "python3-pkg-resources",
    "python3-venv",
    "iproute2",
    "nftables",
    "iputils-ping",
    "etcd-server",
    "etcd-client",
    "openvswitch-switch",
    "gcc",  # heddle_cni builds heddle-cni on the host (heddle_cni_compiled)
    "libc6-dev",
)
# Units the packages enable at install time that the roles, not the image, must own; and
# housekeeping timers (apt-daily would contend for the dpkg lock with the roles' apt tasks).
DISABLED_UNITS = (
    "etcd.service",
    "openvswitch-switch.service",
    "ovsdb-server.service",
    "ovs-vswitchd.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@tty1.service",
)
_FIXUP_VERSION = "3"


def cache_key() -> str:
    """Hash of every input of the build: a different input never reuses a tree."""
    text = "\n".join([SUITE, VARIANT, MIRROR, _FIXUP_VERSION, *sorted(PACKAGES)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rootfs_path() -> Path:
    return CACHE_DIR / f"rootfs-{cache_key()}"


def ensure_rootfs() -> Path:
    """Return the cached tree, building it first if it is missing (a few minutes, once).

    The tree is built in a sibling temp directory and renamed into place only when complete,
    so an interrupted build never leaves a half tree behind that a later run would trust.
    """
    final = rootfs_path()
    if (final / ".heddle-complete").exists():
        return final
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = CACHE_DIR / f".build-{cache_key()}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        started = time.monotonic()
        subprocess.run(
            [
                "debootstrap",
                f"--variant={VARIANT}",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(work),
                MIRROR,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        _fixup(work)
        (work / ".heddle-complete").write_text(f"{time.monotonic() - started:.0f} s\n")
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"debootstrap failed: {exc.stderr[-3000:]}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in CACHE_DIR.glob("rootfs-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fixup(root: Path) -> None:
    """Image-level settings every container shares; per-container ones go in its overlay."""
    # `systemctl --root` edits the tree offline and removes alias links too (etcd2.service),
    # which would otherwise keep `systemctl is-enabled etcd` saying "enabled".
    subprocess.run(
        ["systemctl", f"--root={root}", "disable", "--quiet", *DISABLED_UNITS],
        check=True,
        capture_output=True,
        text=True,
    )
    # A minimal image: no machine identity (each container gets its own), no apt lists (the
    # roles must work without refreshing them), no downloaded .debs.
    (root / "etc/machine-id").write_text("")
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (root / d).glob("*"):
            if f.is_file():
                f.unlink()

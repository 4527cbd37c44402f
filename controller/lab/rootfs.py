"""The lab's container image: a busybox root filesystem as a tar, imported by the lab's
dockerds (``controller/lab/docker.py``) and Podmans (``controller/lab/podman.py``), so no
registry is needed."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from controller.lab.nsutil import LabError

BUSYBOX = "/bin/busybox"


def build_rootfs_tar(dest: Path) -> Path:
    """A busybox root filesystem as a tar: ``/bin/busybox``, one symlink per applet, minimal
    ``/etc/passwd`` and ``/etc/group``. Raises ``LabError`` if busybox is missing."""
    if not Path(BUSYBOX).exists():
        raise LabError(f"{BUSYBOX} missing (apt install busybox-static)")
    applets = subprocess.run(
        [BUSYBOX, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    dest.parent.mkdir(parents=True, exist_ok=True)

    def add_dir(tar: tarfile.TarFile, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)

    def add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(dest, "w") as tar:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root"):
            add_dir(tar, d)
        tar.add(BUSYBOX, "bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        add_text(tar, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        add_text(tar, "etc/group", "root:x:0:\n")
    return dest

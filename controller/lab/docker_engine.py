"""Which Docker engine a lab runs: Debian 12's ``docker.io`` 20.10, or trixie's 26.1 beside it.

``engine(name)`` returns what ``controller/lab/docker.py`` needs to start that engine's
``dockerd``: the binary and a ``PATH`` under which dockerd finds its helpers (containerd,
containerd-shim-runc-v2, docker-proxy, runc, docker-init).

* ``"20.10"``: the system's ``/usr/sbin/dockerd`` and the system ``PATH`` (the project's setup
  installs ``docker.io``).
* ``"26.1"``: Debian trixie's ``docker.io`` and ``containerd``, fetched with ``apt-get download``
  under a private apt configuration (its own sources list, lists, cache and status file: the
  system's apt configuration and packages are never touched) and unpacked with ``dpkg-deb -x``
  into ``CACHE`` (``/var/cache/heddle-docker``, outside the repository). A ``ready`` stamp naming
  the unpacked versions makes later calls reuse it. Two binaries come from bookworm instead:
  trixie's ``runc`` needs GLIBC 2.38, and trixie's ``docker-init`` is a link to a ``tini-static``
  that the package does not ship. Both are linked into the engine's ``bin`` directory, which
  comes first in dockerd's ``PATH``.

Fetching needs Debian's archive; ``EngineUnavailable`` says why an engine cannot be had
(retrying helps only if the archive was unreachable).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controller.lab.nsutil import LabError

ENGINES = ("20.10", "26.1")
DEFAULT_ENGINE = "20.10"
CACHE = Path(os.environ.get("HEDDLE_DOCKER_CACHE", "/var/cache/heddle-docker"))
TRIXIE_SOURCE = (
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
    "http://deb.debian.org/debian trixie main"
)
TRIXIE_PACKAGES = ("docker.io", "containerd")
#: Helpers dockerd 26.1 runs by name, and where each comes from in the unpacked tree.
_FROM_TRIXIE = {
    "dockerd": "usr/sbin/dockerd",
    "docker-proxy": "usr/sbin/docker-proxy",
    "containerd": "usr/bin/containerd",
    "containerd-shim-runc-v2": "usr/bin/containerd-shim-runc-v2",
    "ctr": "usr/bin/ctr",
}
_FROM_BOOKWORM = {"runc": "/usr/sbin/runc", "docker-init": "/usr/bin/docker-init"}


class EngineUnavailable(LabError):
    """The engine cannot be set up here; the message says why."""


@dataclass(frozen=True, slots=True)
class Engine:
    """A Docker engine to start: ``dockerd`` with ``path`` as its ``PATH``."""

    name: str
    dockerd: str
    path: str

    def env(self) -> dict[str, str]:
        """The environment dockerd runs with."""
        return {**os.environ, "PATH": self.path}


def engine(name: str = DEFAULT_ENGINE, cache: Path = CACHE) -> Engine:
    """The engine called ``name`` (one of ``ENGINES``), fetched first if needed.

    Raises ``EngineUnavailable``. Idempotent; safe to call from several test modules."""
    system_path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    if name == "20.10":
        if not Path("/usr/sbin/dockerd").exists():
            raise EngineUnavailable("/usr/sbin/dockerd missing (apt install docker.io)")
        return Engine(name, "/usr/sbin/dockerd", system_path)
    if name != "26.1":
        raise EngineUnavailable(f"unknown Docker engine {name!r}: one of {', '.join(ENGINES)}")
    bindir = ensure_trixie(cache)
    return Engine(name, str(bindir / "dockerd"), f"{bindir}:{system_path}")


def ensure_trixie(cache: Path = CACHE) -> Path:
    """Fetch and unpack trixie's Docker into ``cache`` unless a previous run did; return the
    ``bin`` directory to put first in dockerd's ``PATH``."""
    root = cache / "trixie"
    bindir = root / "bin"
    if (root / "ready").exists():
        return bindir
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise EngineUnavailable(f"{tool} missing: Docker 26.1 is fetched with Debian's apt")
    for helper in _FROM_BOOKWORM.values():
        if not Path(helper).exists():
            raise EngineUnavailable(f"{helper} missing (apt install docker.io runc tini)")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="trixie-", dir=cache))
    try:
        versions = _fetch(work)
        tree = work / "tree"
        for deb in sorted((work / "debs").glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(tree)], f"unpacking {deb.name}")
        (work / "bin").mkdir()
        for name, rel in _FROM_TRIXIE.items():
            if not (tree / rel).exists():
                raise EngineUnavailable(f"trixie's packages have no {rel}")
            (work / "bin" / name).symlink_to(root / "tree" / rel)
        for name, path in _FROM_BOOKWORM.items():
            (work / "bin" / name).symlink_to(path)
        (work / "ready").write_text("\n".join(versions) + "\n")
        shutil.rmtree(work / "apt", ignore_errors=True)
        shutil.rmtree(work / "debs", ignore_errors=True)
        if root.exists():  # a half-made tree of an interrupted run
            shutil.rmtree(root)
        work.rename(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return bindir


def _fetch(work: Path) -> list[str]:
    """Download trixie's packages with a private apt configuration; their versions."""
    apt = work / "apt"
    (apt / "lists" / "partial").mkdir(parents=True)
    (apt / "cache" / "archives" / "partial").mkdir(parents=True)
    (apt / "status").touch()
    (apt / "sources.list").write_text(TRIXIE_SOURCE + "\n")
    opts = [
        "-o", f"Dir::Etc::SourceList={apt / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", f"Dir::State::Lists={apt / 'lists'}",
        "-o", f"Dir::Cache={apt / 'cache'}",
        "-o", f"Dir::State::status={apt / 'status'}",
        "-o", "APT::Sandbox::User=root",
    ]  # fmt: skip
    _run(["apt-get", *opts, "-qq", "update"], "fetching trixie's package lists")
    debs = work / "debs"
    debs.mkdir()
    _run(["apt-get", *opts, "-qq", "download", *TRIXIE_PACKAGES], "downloading", cwd=debs)
    return sorted(p.name for p in debs.glob("*.deb"))


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False,
                          stdin=subprocess.DEVNULL, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        raise EngineUnavailable(
            f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]}"
        )

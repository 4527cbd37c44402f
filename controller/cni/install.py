"""``heddle cni install``: the network configuration list a CNI runtime reads for one heddle
network on one host, written where the runtime looks (``/etc/cni/net.d`` by default).

The list names the plugin (``type``: the executable ``heddle-cni``, which the runtime finds in
its plugin directories), the heddle network, the host (the agent refuses a configuration
copied to another host) and how to reach the host's agent (``socket``), which is how the plugin
reaches etcd: the agent holds the connection and the host's identity
(``controller/cni/shim.py`` says why).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from controller.cni import shim
from controller.cni.shim import DEFAULT_SOCKET
from controller.model.errors import Conflict, HeddleError
from controller.model.records import check_label

PLUGIN_TYPE = "heddle-cni"
SOURCE = Path(__file__).with_name("heddle_cni.c")
DEFAULT_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIR = "/opt/cni/bin"


class PluginBuildError(HeddleError):
    """The compiled plugin could not be built (the compiler's output says why). Retrying does
    not help; ``heddle cni plugin --script`` writes the script instead."""


def conflist(network: str, host: str, socket: str = DEFAULT_SOCKET) -> dict[str, Any]:
    """The configuration list of ``network`` on ``host``. Pure; raises ``InvalidRecord``."""
    check_label(network, "network")
    check_label(host, "host")
    return {
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {"type": PLUGIN_TYPE, "network": network, "host": host, "socket": socket},
        ],
    }


def is_heddles(path: Path) -> bool:
    """Whether the configuration list at ``path`` is one heddle wrote (its first plugin is
    ``heddle-cni``). False for anything unreadable."""
    try:
        plugins = json.loads(path.read_text()).get("plugins", [])
        return bool(plugins) and plugins[0].get("type") == PLUGIN_TYPE
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return False


def plugin_script(python: str = sys.executable) -> str:
    """The plugin as a runtime should run it when no C compiler is at hand:
    ``controller/cni/shim.py`` itself (standard library only) as a script for ``python -I -S``
    -- no site, no package lookup: each of the runtime's two to four calls per container starts
    in about a third of the console script's time."""
    return f"#!{python} -IS\n" + Path(shim.__file__).read_text()


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def compile_plugin(compiler: str, python: str = sys.executable, *flags: str) -> bytes:
    """``controller/cni/heddle_cni.c`` built with ``compiler``: the executable's bytes. It
    answers as ``shim.py`` does and hands any invocation off the plain path to ``shim.py`` run
    by ``python`` (``heddle_cni.c`` says why). Deterministic for one compiler. Raises
    ``PluginBuildError`` (with the compiler's output) if the build fails."""
    defines = {
        "VERSION_ANSWER": _c_string(shim.VERSION_ANSWER),
        "DEFAULT_SOCKET": _c_string(shim.DEFAULT_SOCKET),
        "DEFAULT_TIMEOUT": repr(float(shim.DEFAULT_TIMEOUT)),
        "FALLBACK_PYTHON": _c_string(python),
        "FALLBACK_SCRIPT": _c_string(str(Path(shim.__file__).resolve())),
    }
    with tempfile.TemporaryDirectory(prefix="heddle-cni-build-") as tmp:
        out = Path(tmp) / PLUGIN_TYPE
        cmd = [compiler, "-O2", "-std=c11", "-Wall", "-Wextra", *flags,
               *(f"-D{k}={v}" for k, v in defines.items()),
               "-o", str(out), str(SOURCE)]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise PluginBuildError(f"{compiler} cannot run: {exc}") from None
        if done.returncode != 0:
            raise PluginBuildError(f"{compiler} failed to build {SOURCE.name}:\n{done.stderr}")
        return out.read_bytes()


def install_plugin(
    directory: str | Path = DEFAULT_BIN_DIR, compiler: str | None = None, script: bool = False
) -> tuple[Path, bool, str]:
    """Write ``<directory>/heddle-cni`` atomically, mode 0755: compiled (``compile_plugin``)
    when a C compiler is found (``compiler``, else ``cc`` on the PATH) and ``script`` is not
    asked for, else the script (``plugin_script``). Returns its path, whether it changed and
    which kind it is (``"compiled"`` or ``"script"``). Idempotent. Raises ``OSError``,
    ``PluginBuildError``."""
    compiler = None if script else compiler or shutil.which("cc")
    if compiler is None:
        return (*_write(Path(directory), PLUGIN_TYPE, plugin_script().encode(), 0o755), "script")
    binary = compile_plugin(compiler)
    return (*_write(Path(directory), PLUGIN_TYPE, binary, 0o755), "compiled")


def install(
    directory: str | Path, network: str, host: str, socket: str = DEFAULT_SOCKET
) -> tuple[Path, bool]:
    """Write ``<directory>/<network>.conflist`` atomically (a runtime never reads half a file);
    return its path and whether it changed. Idempotent. Raises ``Conflict`` if that file
    exists and is not heddle's (it is someone else's network), ``OSError`` if the directory
    cannot be written."""
    text = (json.dumps(conflist(network, host, socket), indent=2) + "\n").encode()
    path = Path(directory) / f"{network}.conflist"
    if path.exists() and not is_heddles(path):
        raise Conflict(f"{path} exists and is not heddle's: remove it or use another --dir")
    return _write(Path(directory), path.name, text, 0o644)


def _write(d: Path, name: str, data: bytes, mode: int) -> tuple[Path, bool]:
    """``d/name`` holds ``data`` with ``mode``, replaced atomically (a runtime never reads or
    runs half a file): (its path, whether it changed)."""
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    with contextlib.suppress(OSError):
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
            return path, False
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path, True

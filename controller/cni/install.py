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
import sys
import tempfile
from pathlib import Path
from typing import Any

from controller.cni import shim
from controller.cni.shim import DEFAULT_SOCKET
from controller.model.errors import Conflict
from controller.model.records import check_label

PLUGIN_TYPE = "heddle-cni"
DEFAULT_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIR = "/opt/cni/bin"


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
    """The plugin as a runtime should run it: ``controller/cni/shim.py`` itself (standard
    library only) as a script for ``python -I -S`` -- no site, no package lookup: each of the
    runtime's two to four calls per container starts in about a third of the console
    script's time."""
    return f"#!{python} -IS\n" + Path(shim.__file__).read_text()


def install_plugin(directory: str | Path = DEFAULT_BIN_DIR) -> tuple[Path, bool]:
    """Write ``<directory>/heddle-cni`` (``plugin_script``) atomically, mode 0755; return its
    path and whether it changed. Idempotent. Raises ``OSError``."""
    return _write(Path(directory), PLUGIN_TYPE, plugin_script(), 0o755)


def install(
    directory: str | Path, network: str, host: str, socket: str = DEFAULT_SOCKET
) -> tuple[Path, bool]:
    """Write ``<directory>/<network>.conflist`` atomically (a runtime never reads half a file);
    return its path and whether it changed. Idempotent. Raises ``Conflict`` if that file
    exists and is not heddle's (it is someone else's network), ``OSError`` if the directory
    cannot be written."""
    text = json.dumps(conflist(network, host, socket), indent=2) + "\n"
    path = Path(directory) / f"{network}.conflist"
    if path.exists() and not is_heddles(path):
        raise Conflict(f"{path} exists and is not heddle's: remove it or use another --dir")
    return _write(Path(directory), path.name, text, 0o644)


def _write(d: Path, name: str, text: str, mode: int) -> tuple[Path, bool]:
    """``d/name`` holds ``text`` with ``mode``, replaced atomically (a runtime never reads or
    runs half a file): (its path, whether it changed)."""
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    with contextlib.suppress(OSError):
        if path.read_text() == text and (path.stat().st_mode & 0o777) == mode:
            return path, False
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path, True

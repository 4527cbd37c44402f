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
import tempfile
from pathlib import Path
from typing import Any

from controller.cni.shim import DEFAULT_SOCKET
from controller.model.errors import Conflict
from controller.model.records import check_label

PLUGIN_TYPE = "heddle-cni"
DEFAULT_DIR = "/etc/cni/net.d"


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


def _ours(path: Path) -> bool:
    try:
        plugins = json.loads(path.read_text()).get("plugins", [])
        return bool(plugins) and plugins[0].get("type") == PLUGIN_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def install(
    directory: str | Path, network: str, host: str, socket: str = DEFAULT_SOCKET
) -> tuple[Path, bool]:
    """Write ``<directory>/<network>.conflist`` atomically (a runtime never reads half a file);
    return its path and whether it changed. Idempotent. Raises ``Conflict`` if that file
    exists and is not heddle's (it is someone else's network), ``OSError`` if the directory
    cannot be written."""
    text = json.dumps(conflist(network, host, socket), indent=2) + "\n"
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{network}.conflist"
    if path.exists() and not _ours(path):
        raise Conflict(f"{path} exists and is not heddle's: remove it or use another --dir")
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return path, False
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{network}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path, True

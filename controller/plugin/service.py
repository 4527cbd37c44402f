"""One call for the composition root: the plugin server of one host, wired and not yet started."""

from __future__ import annotations

import os

from controller.plugin.ipam_driver import IpamDriver
from controller.plugin.network_driver import DEFAULT_JOIN_TIMEOUT, NetworkDriver, ReadyWaiter
from controller.plugin.routes import OnCall, build_routes
from controller.plugin.server import PluginServer
from controller.store.kv import KV

DEFAULT_SOCKET = "/run/docker/plugins/heddle.sock"

__all__ = ["DEFAULT_SOCKET", "plugin_server"]


def plugin_server(
    kv: KV,
    host: str,
    socket_path: str | os.PathLike[str],
    wait_ready: ReadyWaiter,
    join_timeout: float = DEFAULT_JOIN_TIMEOUT,
    on_call: OnCall | None = None,
) -> PluginServer:
    """The NetworkDriver + IpamDriver of ``host`` on ``socket_path``; call ``start()``/``stop()``.

    ``kv`` is the agent's ``KV`` (shared; it is thread-safe); ``wait_ready`` is normally a
    ``readiness.LinkReadiness()``, whose ``notify()`` the reconciler should call after each pass.
    ``on_call`` is told of every request (the agent's metrics)."""
    routes = build_routes(NetworkDriver(kv, host, wait_ready, join_timeout), IpamDriver(kv, host))
    return PluginServer(socket_path, routes, on_call=on_call)

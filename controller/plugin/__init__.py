"""The Docker network plugin: libnetwork's remote NetworkDriver and IpamDriver, served by the agent.

Modules: ``api`` (typed requests/responses and their parsing), ``routes`` (the one routing
table and the dispatcher), ``network_driver`` and ``ipam_driver`` (the handlers, on the KV seam),
``mapping`` (the per-host Docker-ID records), ``keys`` (their etcd layout), ``readiness`` (the
Join-time wait for the agent's veth) and ``server`` (HTTP/1.1 on a unix socket).

Everything the plugin knows lives in etcd: dockerd never replays state to a restarted plugin.
"""

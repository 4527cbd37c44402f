"""The desired-state store: key layout, the KV seam (etcd or in-memory), watcher and cache.

heddle never uses a gRPC client across fork (clients are made after it). gRPC's fork support
would instead restart its poller threads in every forked child, and a child that closes its
descriptors before exec (subprocess with preexec_fn, as the lab does to enter a namespace) then
aborts in epoll_wait ("Bad file descriptor"). grpc reads the setting once, when it is first
imported, so it is made here: this package's modules that import grpc (``etcd.py``,
``etcd_errors.py``, ``etcd_watch.py``, ``etcd_access.py``) all run this first.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

"""The desired-state store: key layout, the KV seam (etcd or in-memory), watcher and cache."""

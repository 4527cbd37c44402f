"""The lab: real servers (etcd) and multi-host namespaces for tests, demos and benchmarks."""

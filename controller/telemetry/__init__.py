"""What the agent tells operators: Prometheus metrics, health, diagnostics and log lines."""

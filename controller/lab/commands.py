"""The lab's command-line verbs as plain functions (``cli.py`` owns the argument parsing).

The lab lives in ``$HEDDLE_LAB_DIR`` (default ``/run/heddle-lab``) so that ``down`` and ``status``
work from any later process. Errors are ``LabError`` (a ``HeddleError``) with a message meant for
the operator.
"""

from __future__ import annotations

from typing import Any

from controller.lab.topology import Lab


def lab_up(hosts: int = 3, backend: str = "kernel") -> dict[str, Any]:
    """Build the lab with ``hosts`` hosts and running agents; return ``lab_status()``."""
    lab = Lab()
    lab.up(hosts=hosts, backend=backend)
    return lab.status()


def lab_down() -> None:
    """Remove every trace of the lab (idempotent: no lab is not an error)."""
    Lab().down()


def lab_status() -> dict[str, Any]:
    """``{"etcd": URL, "hosts": [{"name", "netns", "vtep", "backend", "agent_pid"}]}``."""
    return Lab().status()


def lab_demo() -> int:
    """Bring up a 3-host lab unless one is up, run the demo, return its exit code.

    A lab this call started is torn down afterwards; an existing lab is left running.
    """
    from controller.lab.demo import run_demo  # imports the etcd client: only when needed

    lab = Lab()
    started = not lab.is_up
    if started:
        lab.up(hosts=3)
    try:
        return run_demo(lab)
    finally:
        if started:
            lab.down()

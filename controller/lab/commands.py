"""The lab's command-line verbs as plain functions (``cli.py`` owns the argument parsing).

The lab lives in ``$HEDDLE_LAB_DIR`` (default ``/run/heddle-lab``) so that ``down`` and ``status``
work from any later process. Errors are ``LabError`` (a ``HeddleError``) with a message meant for
the operator.
"""

from __future__ import annotations

from typing import Any

from controller.lab.nsutil import LabError
from controller.lab.topology import DEFAULT_UNDERLAY_SUBNET6, Lab


def lab_up(
    hosts: int = 3,
    backend: str = "kernel",
    docker: str | None = None,
    secure: bool = False,
    podman: bool = False,
    underlay: str = "ipv4",
) -> dict[str, Any]:
    """Build the lab with ``hosts`` hosts and running agents; return ``lab_status()``.

    ``underlay``: ``"ipv6"`` gives the hosts IPv6 VTEPs (``DEFAULT_UNDERLAY_SUBNET6``: VXLAN
    over IPv6; the kernel backend only).

    ``secure``: etcd with TLS client certificates, authentication and one identity per host
    (``controller/lab/secure.py``); ``operator_flags`` in the status are the CLI's flags.

    With ``docker`` (an engine of ``docker_engine.ENGINES``: ``"20.10"`` is Debian's
    ``docker.io``, ``"26.1"`` trixie's, fetched on first use), every host also runs a private
    dockerd of that engine whose ``/run/docker/plugins`` holds that host's agent's plugin socket;
    ``docker_host`` in the status is its ``DOCKER_HOST``, ``docker_engine`` the engine.

    With ``podman``, every host also has a private Podman (``controller/lab/podman.py``) that
    runs containers on heddle networks through ``heddle-cni``; ``lab_podman`` runs it. On
    failure nothing is left behind."""
    if docker is not None and underlay != "ipv4":
        raise LabError("--docker combines with an IPv4 underlay only")
    if docker is not None and (secure or podman):
        raise LabError("--docker combines with neither --secure nor --podman yet")
    if docker is None:
        lab = Lab(underlay_subnet=DEFAULT_UNDERLAY_SUBNET6) if underlay == "ipv6" else Lab()
        lab.up(hosts=hosts, backend=backend, secure=secure)
        if podman:
            from controller.lab.podman import PodmanLab

            pl = PodmanLab(lab)
            try:
                pl.start()
            except BaseException:
                try:
                    pl.down()
                finally:
                    lab.down()
                raise
        return lab_status()
    from controller.lab.docker import DockerLab

    plab = Lab()
    dl = DockerLab(plab, engine=docker)
    plab.agents.plugin_socket = dl.plugin_socket
    try:
        plab.up(hosts=hosts, backend=backend)
        if not dl.wait_plugins():
            raise LabError("the agents did not start serving the Docker plugin; see their logs")
        dl.start()
    except BaseException:
        try:
            dl.down()
        finally:
            plab.down()
        raise
    return lab_status()


def lab_down() -> None:
    """Remove every trace of the lab, its dockerds and Podmans included (idempotent: no lab is
    not an error)."""
    from controller.lab.docker import DockerLab
    from controller.lab.podman import PodmanLab

    lab = Lab()
    try:
        DockerLab(lab).down()
        PodmanLab(lab).down()
    finally:
        lab.down()


def lab_podman(host: str, args: list[str]) -> int:
    """Run ``podman ARGS`` as lab host ``host``'s Podman (its configuration lists brought up
    to date with the heddle networks first); print its output; return its exit status."""
    import sys

    from controller.lab.podman import PodmanLab

    pl = PodmanLab(Lab())
    if not pl.dir(host).exists():
        raise LabError(f"no Podman on lab host {host!r} (heddle lab up --podman)")
    pl.sync_networks(host)
    done = pl.podman(host, args[1:] if args[:1] == ["--"] else args, check=False, timeout=3600)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


def lab_status() -> dict[str, Any]:
    """``{"etcd": URL, "hosts": [{"name", "netns", "vtep", "backend", "agent_pid",
    "docker_host"?, "docker_engine"?, "podman"?, "cni_socket"}]}`` (the docker keys only for a
    lab started with ``docker``, ``podman`` -- where its CNI configuration lists are and its
    ``CONTAINERS_*`` settings -- for one started with ``podman``)."""
    from controller.lab.docker import DockerLab
    from controller.lab.podman import PodmanLab

    lab = Lab()
    status = lab.status()
    dl = DockerLab(lab)
    pl = PodmanLab(lab)
    for h in status.get("hosts", []):
        sock = dl.docker_socket(h["name"])
        if sock.exists():
            h["docker_host"] = f"unix://{sock}"
            h["docker_engine"] = dl.engine_name
        if pl.dir(h["name"]).exists():
            h["podman"] = {
                "cni_dir": str(pl.cni_dir(h["name"])),
                **{k: v for k, v in pl.env(h["name"]).items() if k.startswith("CONTAINERS_")},
            }
        h["cni_socket"] = str(lab.agents.cni_socket(h["name"]))
    return status


def lab_demo() -> int:
    """Bring up a 3-host lab unless one is up, run the demo, return its exit code.

    A lab this call started is torn down afterwards (``lab up`` keeps one for exploring); an
    existing lab is left running.
    """
    from controller.lab.demo import run_demo  # imports the etcd client: only when needed

    lab = Lab()
    started = not lab.is_up
    if started:
        print("starting a 3-host lab for the demo (removed again at the end; `heddle lab up`"
              " keeps one)", flush=True)  # fmt: skip
        lab.up(hosts=3)
    else:
        print("using the lab that is up (it stays up)", flush=True)
    try:
        return run_demo(lab)
    finally:
        if started:
            lab.down()
            print("removed the demo's lab", flush=True)

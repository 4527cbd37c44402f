"""The ``lab`` verbs: start, stop, show and demo the multi-host lab (``controller.lab``)."""

from __future__ import annotations

import argparse
from typing import Any

from controller.output import as_json, table


def lab(args: argparse.Namespace) -> int:
    from controller.lab import commands

    if args.action == "up":
        st = commands.lab_up(
            args.hosts, args.backend, docker=args.docker, secure=args.secure, podman=args.podman,
            underlay=args.underlay,
        )  # fmt: skip
        print(as_json(st) if args.output == "json" else _lab_table(st))
    elif args.action == "podman":
        return commands.lab_podman(args.host, args.args)
    elif args.action == "down":
        commands.lab_down()
        print("lab removed")
    elif args.action == "status":
        st = commands.lab_status()
        print(as_json(st) if args.output == "json" else _lab_table(st))
    elif args.action == "demo":
        return commands.lab_demo()
    return 0


def _lab_table(st: dict[str, Any]) -> str:
    docker = any("docker_host" in h for h in st.get("hosts", []))
    podman = any("podman" in h for h in st.get("hosts", []))
    heads = ["host", "netns", "vtep", "backend", "agent pid", "metrics"]
    heads += ["docker host"] if docker else []
    heads += ["podman"] if podman else []
    rows = [
        [h["name"], h["netns"], h["vtep"], h["backend"], h.get("agent_pid"), h.get("metrics")]
        + ([h.get("docker_host")] if docker else [])
        + ([f"heddle lab podman {h['name']} ..."] if podman else [])
        for h in st.get("hosts", [])
    ]
    head = f"etcd: {st.get('etcd')}\n"
    if st.get("secure"):
        head += f"secure: run heddle {' '.join(st['operator_flags'])} ... (operator identity)\n"
    return head + table(heads, rows)

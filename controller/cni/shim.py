"""``heddle-cni``: the executable a CNI runtime runs. It answers VERSION itself and hands
every other command to the host's agent, which serves them (``controller/cni/service.py``).

Why a hand-off and not a plugin that talks to etcd itself: a runtime runs the plugin once or
twice per container start (Podman runs VERSION before every ADD and DEL), and the etcd and
netlink libraries take ~0.5 s to import; this module imports the standard library only (~40 ms
in all). The agent already holds the etcd connection, the host's identity and the address pool,
and it is the one that builds the interface, so it also knows when ADD may return. The agent
stays the only writer of the data plane.

The configuration names the agent's socket (``socket``, default ``DEFAULT_SOCKET``) or the
agent's configuration file (``agentConfig``, whose ``cni_socket`` is then used). Nothing is
taken from the environment beyond the CNI variables: DEL may come from another process.
Errors are CNI error objects on stdout and exit status 1; an agent that cannot be reached is
error 11 (try again later), never a hang (``timeout`` bounds every call).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO, TextIO

from controller.cni.spec import (
    INVALID_CONFIG,
    IO_FAILURE,
    TRY_AGAIN_LATER,
    CniError,
    Invocation,
    parse_invocation,
    version_result,
)

DEFAULT_SOCKET = "/run/heddle/cni.sock"
#: How long ADD may wait for the agent to build the interface (the configuration's ``timeout``).
DEFAULT_TIMEOUT = 30.0
PATHS = {c: f"/Cni.{c.capitalize()}" for c in ("ADD", "DEL", "CHECK", "GC", "STATUS")}


def post(path: str, url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    """One HTTP/1.1 POST on the unix socket ``path`` (``Connection: close``): the status and
    the body. Raises ``OSError`` (``TimeoutError`` after ``timeout`` s of silence) or
    ``ValueError`` for an answer that is not HTTP. (Not ``http.client``: it costs the
    executable 20 ms of imports per call, for one request.)"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        head = (
            f"POST {url} HTTP/1.1\r\nHost: heddle\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    header, sep, rest = raw.partition(b"\r\n\r\n")
    status_line = header.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP answer: {raw[:80]!r}")
    return int(status_line[1]), rest


def agent_socket(config: Mapping[str, Any]) -> str:
    """The agent's CNI socket named by ``config``. Raises ``CniError`` (7) for a bad value or
    an unreadable agent configuration."""
    path = config.get("socket")
    agent_config = config.get("agentConfig")
    if path is None and agent_config is not None:
        if not isinstance(agent_config, str):
            raise CniError(INVALID_CONFIG, "agentConfig must be a path")
        import tomllib  # only here: 6 ms of imports that every other call would pay

        try:
            with open(agent_config, "rb") as f:
                path = tomllib.load(f).get("cni_socket", DEFAULT_SOCKET)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            why = f"cannot read agentConfig {agent_config}"
            raise CniError(INVALID_CONFIG, why, str(exc)) from None
    path = DEFAULT_SOCKET if path is None else path
    if not isinstance(path, str) or not path.startswith("/"):
        raise CniError(INVALID_CONFIG, f"socket {path!r} must be an absolute path")
    return path


def call_agent(inv: Invocation) -> dict[str, Any]:
    """Send ``inv`` to the agent; its result, or ``CniError`` as the agent or the failure
    says. Never blocks beyond the configuration's ``timeout`` plus a margin."""
    path = agent_socket(inv.config)
    timeout = inv.config.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 600:
        raise CniError(INVALID_CONFIG, f"timeout {timeout!r} must be a number of seconds, 0-600")
    try:
        status, body = post(path, PATHS[inv.command], json.dumps(inv.request()).encode(),
                            float(timeout) + 5.0)  # fmt: skip
    except (FileNotFoundError, ConnectionRefusedError):
        raise CniError(
            TRY_AGAIN_LATER,
            f"the heddle agent of this host is not serving CNI on {path}",
            "start the agent (heddle agent ... --cni-socket) and try again",
        ) from None
    except (OSError, ValueError) as exc:
        why = f"talking to the heddle agent on {path} failed"
        raise CniError(IO_FAILURE, why, repr(exc)) from None
    try:
        answer = json.loads(body)
    except ValueError:
        raise CniError(IO_FAILURE, "the heddle agent's answer is not JSON", body[:200].decode(
            "utf-8", "replace")) from None  # fmt: skip
    if not isinstance(answer, dict):
        raise CniError(IO_FAILURE, "the heddle agent's answer is not a JSON object")
    if status != 200:
        code = answer.get("code")
        raise CniError(
            code if isinstance(code, int) else IO_FAILURE,
            str(answer.get("msg") or answer.get("Err") or f"agent answered {status}"),
            str(answer.get("details", "")),
        )
    return answer


def run(env: Mapping[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """One invocation: (exit status, what to print; None prints nothing). Never raises."""
    version = "1.0.0"
    try:
        inv = parse_invocation(env, stdin)
        version = inv.version
        if inv.command == "VERSION":
            return 0, version_result(version)
        result = call_agent(inv)
        return 0, (result if inv.command == "ADD" else None)  # the others print nothing
    except CniError as exc:
        return 1, exc.to_json(version)


def main(
    env: Mapping[str, str] | None = None,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """The ``heddle-cni`` entry point."""
    raw = (stdin or sys.stdin.buffer).read()
    status, out = run(os.environ if env is None else env, raw)
    if out is not None:
        print(json.dumps(out), file=stdout or sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())

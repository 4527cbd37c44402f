"""``heddle-cni``: the executable a CNI runtime runs. It answers VERSION itself and hands
every other command -- its ``CNI_*`` environment and its stdin, as they came -- to the host's
agent, which parses, checks and serves them (``controller/cni/service.py``).

Why a hand-off and not a plugin that talks to etcd itself: a runtime runs the plugin two to four
times per container (Podman runs VERSION before every ADD and DEL), and etcd's and netlink's
Python libraries take about 0.5 s to import. The agent already holds the etcd connection, the
host's identity and the address pool, and it builds the interface, so it also knows when ADD
may return; the agent stays the only writer of the data plane.

Why this module is self-contained (the standard library only, nothing of ``controller``) and
imports so little: every import is paid on every call. ``heddle cni plugin`` copies it into
the runtime's plugin directory as a script run with ``python -I -S`` (no site, no package
lookup: about 12 ms to answer VERSION here, where the ``heddle-cni`` console script, which runs
this same code through the package, takes about 35 ms); VERSION imports nothing more, the other
commands ``json``; ``_socket``, not ``socket`` (whose ``enum`` and ``selectors`` imports cost
about 10 ms).

The configuration names the agent's socket (``socket``, default ``DEFAULT_SOCKET``) or the
agent's configuration file (``agentConfig``, whose ``cni_socket`` is then used). Nothing is
taken from the environment beyond the CNI variables: DEL may come from another process.
Errors are CNI error objects on stdout and exit status 1; an agent that cannot be reached is
error 11 (try again later), never a hang (``timeout`` bounds every call).
"""

from __future__ import annotations

import _socket
import os
import sys

# The specification's versions and the error codes this executable reports itself
# (``controller/cni/spec.py`` has them all and takes these from here).
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
UNDECODABLE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11

DEFAULT_SOCKET = "/run/heddle/cni.sock"
#: How long ADD may wait for the agent to build the interface (the configuration's ``timeout``).
DEFAULT_TIMEOUT = 30.0
ENVIRONMENT = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS",
               "CNI_PATH")  # fmt: skip
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
VERSION_ANSWER = (
    '{"cniVersion": "1.0.0", "supportedVersions": ['
    + ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    + "]}"
)


class ShimError(Exception):
    """A CNI error this executable reports itself (the agent reports the rest)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def post(path: str, url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    """One HTTP/1.1 POST on the unix socket ``path`` (``Connection: close``): the status and
    the body. Raises ``OSError`` (``TimeoutError`` after ``timeout`` s of silence) or
    ``ValueError`` for an answer that is not HTTP. (Not ``http.client``: 20 ms of imports for
    one request.)"""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
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
    finally:
        sock.close()
    raw = b"".join(chunks)
    header, sep, rest = raw.partition(b"\r\n\r\n")
    status_line = header.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP answer: {raw[:80]!r}")
    return int(status_line[1]), rest


def agent_socket(config: dict) -> str:  # type: ignore[type-arg]
    """The agent's CNI socket named by ``config``. Raises ``ShimError`` (7) for a bad value or
    an unreadable agent configuration."""
    path = config.get("socket")
    agent_config = config.get("agentConfig")
    if path is None and agent_config is not None:
        if not isinstance(agent_config, str):
            raise ShimError(INVALID_CONFIG, "agentConfig must be a path")
        import tomllib  # only here: 6 ms of imports that every other call would pay

        try:
            with open(agent_config, "rb") as f:
                path = tomllib.load(f).get("cni_socket", DEFAULT_SOCKET)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            why = f"cannot read agentConfig {agent_config}"
            raise ShimError(INVALID_CONFIG, why, str(exc)) from None
    path = DEFAULT_SOCKET if path is None else path
    if not isinstance(path, str) or not path.startswith("/"):
        raise ShimError(INVALID_CONFIG, f"socket {path!r} must be an absolute path")
    return path


def load_config(stdin: bytes) -> dict:  # type: ignore[type-arg]
    """The network configuration on stdin (empty: ``{}``). Raises ``ShimError`` (6) for
    anything but a JSON object. (``controller/cni/spec.py`` reads it with this too.)"""
    import json

    try:
        config = json.loads(stdin or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShimError(UNDECODABLE, "the network configuration is not JSON", str(exc)) from None
    if not isinstance(config, dict):
        raise ShimError(UNDECODABLE, "the network configuration is not a JSON object")
    return config


def call_agent(env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    """Hand the invocation to the agent: (HTTP status, its answer). Raises ``ShimError``."""
    import json

    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise ShimError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command[:20]!r} is not one of "
                        f"{', '.join((*COMMANDS, 'VERSION'))}")  # fmt: skip
    config = load_config(stdin)
    path = agent_socket(config)
    timeout = config.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 600:
        raise ShimError(INVALID_CONFIG, f"timeout {timeout!r} must be a number of seconds, 0-600")
    body = json.dumps({"env": {k: env[k] for k in ENVIRONMENT if k in env},
                       "stdin": stdin.decode("utf-8", "replace")})  # fmt: skip
    try:
        return post(path, f"/Cni.{command.capitalize()}", body.encode(), float(timeout) + 5.0)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ShimError(
            TRY_AGAIN_LATER,
            f"the heddle agent of this host is not serving CNI on {path}",
            "start the agent (heddle agent ... --cni-socket) and try again",
        ) from None
    except (OSError, ValueError) as exc:
        why = f"talking to the heddle agent on {path} failed"
        raise ShimError(IO_FAILURE, why, repr(exc)) from None


def _error(exc: ShimError, stdin: bytes) -> str:
    import json

    try:
        version = json.loads(stdin).get("cniVersion", "1.0.0")
    except (ValueError, UnicodeDecodeError, AttributeError):
        version = "1.0.0"
    out = {"cniVersion": version, "code": exc.code, "msg": exc.msg}
    if exc.details:
        out["details"] = exc.details
    return json.dumps(out)


def run(env: dict[str, str], stdin: bytes) -> tuple[int, str | None]:
    """One invocation: (exit status, what to print; None prints nothing). Never raises.

    The agent answers 200 with the result (ADD; the other commands print nothing) or another
    status with the CNI error object, printed as it is."""
    if env.get("CNI_COMMAND") == "VERSION":
        return 0, VERSION_ANSWER
    try:
        status, answer = call_agent(env, stdin)
    except ShimError as exc:
        return 1, _error(exc, stdin)
    text = answer.decode("utf-8", "replace").strip()
    if status != 200:
        return 1, text or _error(ShimError(IO_FAILURE, f"agent answered {status}"), stdin)
    return 0, (text if env.get("CNI_COMMAND") == "ADD" else None)


def main() -> int:
    """The ``heddle-cni`` entry point."""
    status, out = run(dict(os.environ), sys.stdin.buffer.read())
    if out is not None:
        sys.stdout.write(out + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())

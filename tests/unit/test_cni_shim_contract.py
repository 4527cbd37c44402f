"""The compiled ``heddle-cni`` (``controller/cni/heddle_cni.c``) held to the reference
(``controller/cni/shim.py``, run as ``heddle cni plugin --script`` writes it): for every
environment and stdin -- chosen cases and generated ones -- both exit with the same status and
print the same JSON, and the agent receives the same request from both.

The agent here is a real ``PluginServer`` on a unix socket whose CNI routes echo what they
received (or refuse, for a network named ``refuse``), so a difference in what either sends
shows up in what it prints. The real agent behind both: tests/e2e/test_cni.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.cni import spec
from controller.cni.install import compile_plugin, install_plugin, plugin_script
from controller.cni.spec import CniError
from controller.plugin.routes import Route
from controller.plugin.server import PluginServer

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc)")


@dataclass(frozen=True, slots=True)
class Echo:
    body: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"received": dict(self.body)}


def _serve(body: Mapping[str, Any]) -> Echo:
    stdin = body.get("stdin")
    if isinstance(stdin, str) and '"refuse"' in stdin:
        raise CniError(spec.CONFLICT, "refused as asked", "details", version="0.4.0")
    return Echo(body)


@dataclass(frozen=True, slots=True)
class Plugins:
    compiled: Path
    script: Path
    socket: Path
    tmp: Path


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugins]:
    tmp = tmp_path_factory.mktemp("cni-contract")
    compiled = tmp / "compiled"
    compiled.write_bytes(compile_plugin(shutil.which("cc") or "cc", sys.executable, "-Werror"))
    compiled.chmod(0o755)
    script = tmp / "script"
    script.write_text(plugin_script(sys.executable))
    script.chmod(0o755)
    sock = tmp / "cni.sock"
    paths = ("/Cni.Add", "/Cni.Del", "/Cni.Check", "/Cni.Gc", "/Cni.Status")
    with PluginServer(sock, {p: Route("Cni", _serve) for p in paths}):
        yield Plugins(compiled, script, sock, tmp)


def run(plugin: Path, env: Mapping[str, str], stdin: bytes) -> tuple[int, Any]:
    done = subprocess.run(
        [str(plugin)], input=stdin, env=dict(env), capture_output=True, timeout=60, check=False
    )
    out = done.stdout.decode(errors="replace").strip()
    try:
        return done.returncode, json.loads(out) if out else None
    except ValueError:
        return done.returncode, f"not JSON: {out!r} {done.stderr[-300:]!r}"


def same(p: Plugins, env: Mapping[str, str], stdin: bytes) -> tuple[int, Any]:
    """Run both; assert they agree; return the answer."""
    script = run(p.script, env, stdin)
    compiled = run(p.compiled, env, stdin)
    assert compiled == script, f"env={dict(env)} stdin={stdin[:200]!r}"
    return compiled


def cni_env(command: str, **kw: str) -> dict[str, str]:
    out = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K=v",
           "CNI_PATH": "/opt/cni/bin"}  # fmt: skip
    out.update(kw)
    return {k: v for k, v in out.items() if v is not None}


def conf(p: Plugins, **kw: Any) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "blue", "type": "heddle-cni",
                       "socket": str(p.socket), **kw}).encode()  # fmt: skip


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC", "STATUS"])
def test_every_command_reaches_the_agent_the_same_way(plugins: Plugins, command: str) -> None:
    stdin = conf(plugins, extra={"a": [1, 2.5e3, None, True]}, note='quote " and \\ and \t')
    rc, out = same(plugins, cni_env(command), stdin)
    assert rc == 0
    if command == "ADD":
        assert out["received"]["stdin"] == stdin.decode()
        assert out["received"]["env"]["CNI_ARGS"] == "IgnoreUnknown=1;K=v"
    else:
        assert out is None


def test_version_and_a_relayed_error_and_an_absent_agent(plugins: Plugins) -> None:
    assert same(plugins, cni_env("VERSION", CNI_NETNS="dummy"), b'{"cniVersion":"1.0.0"}')[0] == 0
    rc, err = same(plugins, cni_env("ADD"), conf(plugins, name="refuse"))
    assert rc == 1 and err["code"] == spec.CONFLICT and err["cniVersion"] == "0.4.0"
    rc, err = same(plugins, cni_env("DEL"), conf(plugins, socket=str(plugins.tmp / "none.sock")))
    assert rc == 1 and err["code"] == spec.TRY_AGAIN_LATER


def test_the_agent_configuration_path_is_the_references(plugins: Plugins) -> None:
    toml = plugins.tmp / "agent.toml"
    toml.write_text(f'cni_socket = "{plugins.socket}"\n')
    stdin = json.dumps({"cniVersion": "1.0.0", "name": "blue", "agentConfig": str(toml)})
    rc, out = same(plugins, cni_env("ADD"), stdin.encode())
    assert rc == 0 and out["received"]["env"]["CNI_COMMAND"] == "ADD"


ODD_STDIN = {
    "empty": b"",
    "blank": b"  \n",
    "not-json": b"nope",
    "array": b"[1]",
    "trailing": b'{"cniVersion": "1.0.0"} x',
    "leading-zero": b'{"timeout": 01}',
    "nan": b'{"timeout": NaN}',
    "bad-escape": b'{"name": "\\q"}',
    "control": b'{"name": "a\x01b"}',
    "not-ascii": '{"name": "blå"}'.encode(),
    "not-utf8": b'{"name": "\xff"}',
    "escaped-key": b'{"soc\\u006bet": "/x"}',
    "nested-socket": b'{"inner": {"socket": "/nowhere.sock"}, "cniVersion": "0.4.0"}',
    "deep": b'{"a": ' + b"[" * 300 + b"]" * 300 + b"}",
}


@pytest.mark.parametrize("stdin", ODD_STDIN.values(), ids=ODD_STDIN.keys())
def test_odd_configurations_get_the_references_answer(plugins: Plugins, stdin: bytes) -> None:
    same(plugins, cni_env("ADD"), stdin)


ODD_FIELDS: dict[str, dict[str, Any]] = {
    "timeout-string": {"timeout": "30"},
    "timeout-bool": {"timeout": True},
    "timeout-zero": {"timeout": 0},
    "timeout-large": {"timeout": 601},
    "timeout-float": {"timeout": 12.5},
    "socket-relative": {"socket": "cni.sock"},
    "socket-number": {"socket": 5},
    "socket-null": {"socket": None},
    "socket-too-long": {"socket": "/" + "x" * 200},
    "socket-not-a-socket": {"socket": "/etc/passwd"},
    "version-number": {"cniVersion": 1},
    "agent-config-missing": {"agentConfig": "/nonexistent.toml"},
    "agent-config-number": {"agentConfig": 3},
}


@pytest.mark.parametrize("fields", ODD_FIELDS.values(), ids=ODD_FIELDS.keys())
def test_odd_fields_get_the_references_answer(plugins: Plugins, fields: dict[str, Any]) -> None:
    same(plugins, cni_env("ADD"), conf(plugins, **fields))


ODD_ENV = {
    "unknown-command": {"CNI_COMMAND": "FROB"},
    "no-command": {},
    "env-not-ascii": cni_env("ADD", CNI_NETNS="/run/netns/blå"),
    "env-quotes": cni_env("ADD", CNI_IFNAME='e"\\'),
}


@pytest.mark.parametrize("env", ODD_ENV.values(), ids=ODD_ENV.keys())
def test_odd_environments_get_the_references_answer(plugins: Plugins, env: dict[str, str]) -> None:
    same(plugins, env, conf(plugins))


_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_json = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fields=st.dictionaries(
        st.sampled_from(["name", "cniVersion", "timeout", "socket", "other", "prevResult"]),
        _json, max_size=4,
    ),
    live=st.booleans(),
    command=st.sampled_from(["ADD", "DEL", "CHECK", "VERSION", "GC", "X"]),
    ifname=st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), max_size=6),
)  # fmt: skip
def test_any_configuration_gets_the_same_answer(
    plugins: Plugins, fields: dict[str, Any], live: bool, command: str, ifname: str
) -> None:
    body = {**({"socket": str(plugins.socket)} if live else {}), **fields}
    same(plugins, cni_env(command, CNI_IFNAME=ifname or None), json.dumps(body).encode())


def test_heddle_cni_plugin_writes_the_compiled_one_when_it_can(tmp_path: Path) -> None:
    path, changed, kind = install_plugin(tmp_path)
    assert (changed, kind) == (True, "compiled") and os.access(path, os.X_OK)
    assert path.read_bytes().startswith(b"\x7fELF")
    assert install_plugin(tmp_path) == (path, False, "compiled"), "idempotent"
    assert install_plugin(tmp_path, script=True) == (path, True, "script")
    assert path.read_text().startswith(f"#!{sys.executable} -IS\n")


def test_the_plain_path_never_starts_python(plugins: Plugins) -> None:
    """Built with a fallback interpreter that does not exist: the plain commands still work
    (they are the compiled fast path), an odd one says it could not hand off."""
    alone = plugins.tmp / "alone"
    alone.write_bytes(compile_plugin(shutil.which("cc") or "cc", "/nonexistent/python"))
    alone.chmod(0o755)
    assert run(alone, cni_env("VERSION"), b"")[0] == 0
    rc, out = run(alone, cni_env("ADD"), conf(plugins))
    assert rc == 0 and out["received"]["env"]["CNI_COMMAND"] == "ADD"
    assert run(alone, cni_env("DEL"), conf(plugins)) == (0, None)
    rc, err = run(alone, cni_env("ADD"), b"nope")
    assert rc == 1 and err["code"] == spec.IO_FAILURE and "cannot run" in err["msg"]

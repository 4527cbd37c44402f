"""The CNI plugin without a kernel: the specification's parsing and results (pure, and fuzzed:
any environment and stdin is a ``CniError``, never anything else), the agent's service on the
in-memory store with a stateful fake of the interface reader, and the executable's hand-off
over a real unix socket to a real ``PluginServer``.

The same against real namespaces and agents: tests/e2e/test_cni.py (and Podman:
tests/e2e/test_podman.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.cni import shim, spec
from controller.cni.install import install, plugin_script
from controller.cni.interface import InterfaceSeen
from controller.cni.service import CniService, cni_routes, endpoint_id_for
from controller.cni.spec import CniError, parse_invocation
from controller.desired import DesiredState
from controller.model import codec
from controller.model.errors import Conflict, InvalidRecord
from controller.model.records import Endpoint, Host, check_netns
from controller.plugin.server import PluginServer
from controller.store import keys
from controller.store.memory import MemoryKV

NETNS = "/run/netns/cni-test"


def env(command: str, **kw: str) -> dict[str, str]:
    out = {"CNI_COMMAND": command, "CNI_CONTAINERID": "abc123", "CNI_NETNS": NETNS,
           "CNI_IFNAME": "eth0"}  # fmt: skip
    out.update(kw)
    return {k: v for k, v in out.items() if v}


CONF = {"cniVersion": "1.0.0", "name": "blue", "type": "heddle"}


def raw(conf: dict[str, Any] = CONF) -> bytes:
    return json.dumps(conf).encode()


# -- spec ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("environment", "stdin", "code"),
    [
        ({"CNI_COMMAND": "FROB"}, raw(), spec.INVALID_ENVIRONMENT),
        (env("ADD"), b"[1]", spec.UNDECODABLE),
        (env("ADD"), b"\xff", spec.UNDECODABLE),
        (env("ADD"), raw({**CONF, "cniVersion": "0.2.0"}), spec.INCOMPATIBLE_VERSION),
        (env("CHECK"), raw({**CONF, "cniVersion": "0.3.1"}), spec.INCOMPATIBLE_VERSION),
        (env("GC"), raw(CONF), spec.INCOMPATIBLE_VERSION),
        (env("ADD", CNI_NETNS=""), raw(), spec.INVALID_ENVIRONMENT),
        (env("ADD", CNI_IFNAME="a/b"), raw(), spec.INVALID_ENVIRONMENT),
        (env("ADD", CNI_CONTAINERID="-x"), raw(), spec.INVALID_ENVIRONMENT),
        (env("ADD", CNI_ARGS="novalue"), raw(), spec.INVALID_ENVIRONMENT),
        (env("ADD"), raw({**CONF, "type": "bridge"}), spec.INVALID_CONFIG),
        (env("ADD"), raw({"cniVersion": "1.0.0", "type": "heddle"}), spec.INVALID_CONFIG),
    ],
)
def test_bad_invocations_get_the_specifications_code(
    environment: dict[str, str], stdin: bytes, code: int
) -> None:
    with pytest.raises(CniError) as err:
        parse_invocation(environment, stdin)
    assert err.value.code == code and err.value.msg


def test_del_needs_no_namespace_and_the_network_defaults_to_the_name() -> None:
    inv = parse_invocation(env("DEL", CNI_NETNS="", CNI_ARGS="IgnoreUnknown=1;IP=10.0.0.9"), raw())
    assert (inv.network, inv.netns, inv.args["IP"]) == ("blue", "", "10.0.0.9")
    assert parse_invocation(env("ADD"), raw({**CONF, "network": "red"})).network == "red"


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"]),
        st.one_of(st.sampled_from(spec.COMMANDS), st.text(max_size=20)),
    ),
    st.one_of(
        st.binary(max_size=60),
        st.builds(
            lambda d: json.dumps(d).encode(),
            st.dictionaries(
                st.sampled_from(["cniVersion", "name", "type", "network"]),
                st.one_of(
                    st.sampled_from(spec.SUPPORTED_VERSIONS),
                    st.text(max_size=8),
                    st.integers(),
                    st.none(),
                ),
            ),
        ),
    ),
)
def test_any_invocation_parses_or_is_a_cni_error(environment: dict[str, str], stdin: bytes) -> None:
    try:
        parse_invocation(environment, stdin)
    except CniError as exc:
        assert 1 <= exc.code < 100
    status, out = shim.run({**environment, "CNI_COMMAND": "VERSION"}, stdin)
    assert status == 0 and out is not None
    assert json.loads(out)["supportedVersions"] == list(spec.SUPPORTED_VERSIONS)
    # anything else the executable cannot hand over is a CNI error object, never a crash
    status, out = shim.run({**environment, "CNI_COMMAND": "ADD"}, stdin)
    assert status == 1 and out is not None and json.loads(out)["code"] in (4, 6, 7, 11)


def test_add_result_extends_a_previous_result_and_older_versions_say_ip_version() -> None:
    prev = {"interfaces": [{"name": "x"}], "ips": [{"address": "10.9.0.2/24", "interface": 0}]}
    res = spec.add_result("eth0", "02:00:0a:00:00:02", NETNS, [("10.0.0.2/24", None)], None, prev)
    assert [i["name"] for i in res["interfaces"]] == ["x", "eth0"]
    assert res["ips"][1] == {"address": "10.0.0.2/24", "interface": 1}
    assert res["routes"] == [] and "dns" not in res
    old = spec.result_in("0.4.0", res)
    assert old["cniVersion"] == "0.4.0" and all(ip["version"] == "4" for ip in old["ips"])


# -- schema -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ok",
    [
        "c1",
        "/run/netns/netns-0b3c2a9e-1f3a-4d2b-9a0e-2f8d7c1b6e5a",
        "/var/run/netns/x",
        "/proc/42/ns/net",
        "/proc/42/task/43/ns/net",
        "/var/run/docker/netns/1a2b3c",
    ],
)
def test_namespace_names_and_paths(ok: str) -> None:
    assert check_netns(ok) == ok


@pytest.mark.parametrize(
    "bad",
    [
        "/run/netns/../x",
        "/run/netns/..",
        "/x/./y",
        "/a//b",
        "relative/path",
        "..",
        "/run/netns/",
        "/" + "a" * 300,
        "a" * 16,
        5,
    ],
)
def test_other_namespace_paths_are_refused(bad: object) -> None:
    with pytest.raises(InvalidRecord):
        check_netns(bad)


def test_container_field_round_trips_and_is_left_out_when_unset() -> None:
    ep = Endpoint("c1", "blue", "h1", "10.0.0.2", "02:00:0a:00:00:02", NETNS, "eth0", "abc")
    assert codec.decode_endpoint(codec.encode_endpoint(ep)) == ep
    plain = Endpoint("c1", "blue", "h1", "10.0.0.2", "02:00:0a:00:00:02", "c1")
    assert "container" not in json.loads(codec.encode_endpoint(plain))
    with pytest.raises(InvalidRecord):
        Endpoint("c1", "blue", "h1", "10.0.0.2", "02:00:0a:00:00:02", NETNS, container="a b")


# -- the agent's service ------------------------------------------------------------------------
class FakeKernel:
    """The interface reader's stateful fake: an interface appears, as the agent would build
    it, once ``build`` is called for an endpoint; ``drift`` changes it."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], InterfaceSeen] = {}

    def build(self, ep: Endpoint, prefixlen: int) -> None:
        assert ep.netns is not None
        address = f"{ep.ip}/{prefixlen}"
        self.seen[ep.netns, ep.ifname] = InterfaceSeen(True, True, ep.mac, (address,))

    def read(self, netns: str, ifname: str) -> InterfaceSeen | None:
        return self.seen.get((netns, ifname))

    def exists(self, netns: str) -> bool:
        return netns.startswith("/run/netns/")


class AgentWaiter:
    """Stands for the agent: every wait first lets it build whatever is in the store."""

    def __init__(self, kv: MemoryKV, kernel: FakeKernel, working: bool = True) -> None:
        self.kv, self.kernel, self.working = kv, kernel, working

    def until(self, check: Callable[[], bool], timeout: float) -> bool:
        if self.working:
            for item in self.kv.list(keys.ENDPOINTS).items:
                ep = codec.decode_endpoint(item.value)
                if ep.netns is not None and (ep.netns, ep.ifname) not in self.kernel.seen:
                    self.kernel.build(ep, 24)
        return check()


@pytest.fixture
def world() -> Iterator[tuple[MemoryKV, FakeKernel, AgentWaiter, CniService]]:
    kv = MemoryKV()
    kv.put_raw(keys.host("h1"), codec.encode_host(Host("h1", "172.31.253.1")))
    DesiredState(kv).create_network("blue", "10.0.0.0/24", vni=7, gateway="10.0.0.1")
    kernel = FakeKernel()
    waiter = AgentWaiter(kv, kernel)
    svc = CniService(kv, "h1", waiter, lambda: True, kernel.read, kernel.exists, kernel.exists)
    yield kv, kernel, waiter, svc


def invoke(command: str, netns: str = NETNS, **conf: Any) -> spec.Invocation:
    return parse_invocation(env(command, CNI_NETNS=netns), raw({**CONF, **conf}))


def test_add_writes_one_endpoint_and_answers_once_the_interface_is_built(world: Any) -> None:
    kv, kernel, _, svc = world
    res = svc.add(invoke("ADD"))
    eid = endpoint_id_for("abc123", "eth0")
    ep = codec.decode_endpoint(kv.get(keys.endpoint("blue", eid)).value)
    assert (ep.host, ep.netns, ep.container, ep.ip) == ("h1", NETNS, "abc123", "10.0.0.2")
    assert kv.get(keys.placement("h1", "blue", eid)) is not None
    assert res["ips"] == [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0}]
    assert svc.add(invoke("ADD")) == res, "a repeated ADD answers like the first"
    assert svc.check(invoke("CHECK")) == {}
    kernel.seen[NETNS, "eth0"] = InterfaceSeen(True, False, ep.mac, ())
    with pytest.raises(CniError) as err:
        svc.check(invoke("CHECK"))
    assert err.value.code == spec.DRIFTED and "down" in err.value.details


def test_add_that_the_agent_never_builds_leaves_nothing(world: Any) -> None:
    kv, _, waiter, svc = world
    waiter.working = False
    with pytest.raises(CniError) as err:
        svc.add(invoke("ADD", timeout=0.1))
    assert err.value.code == spec.TRY_AGAIN_LATER
    assert not kv.list(keys.ENDPOINTS).items and not kv.list(keys.ipam_of("blue")).items


def test_del_is_idempotent_and_gc_keeps_only_valid_attachments(world: Any) -> None:
    kv, _, _, svc = world
    desired = DesiredState(kv)
    cli_ep = desired.create_endpoint("blue", "h1", netns="c9")
    for c in ("keep", "drop"):
        svc.add(parse_invocation(env("ADD", CNI_CONTAINERID=c, CNI_NETNS=f"/run/netns/{c}"), raw()))
    assert svc.delete(invoke("DEL")) == {} and svc.delete(invoke("DEL")) == {}  # never added
    gc = {**CONF, "cniVersion": "1.1.0",
          "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}  # fmt: skip
    svc.gc(parse_invocation({"CNI_COMMAND": "GC"}, raw(gc)))
    left = {(e.container, e.id) for e in desired.endpoints("blue")}
    assert left == {(None, cli_ep.id), ("keep", endpoint_id_for("keep", "eth0"))}


def test_status_is_error_50_until_the_first_pass(world: Any) -> None:
    kv, kernel, waiter, _ = world
    svc = CniService(kv, "h1", waiter, lambda: False, kernel.read, kernel.exists, kernel.exists)
    with pytest.raises(CniError) as err:
        conf = raw({**CONF, "cniVersion": "1.1.0"})
        svc.status(parse_invocation({"CNI_COMMAND": "STATUS"}, conf))
    assert err.value.code == spec.NOT_AVAILABLE


# -- the executable's hand-off ------------------------------------------------------------------
def test_the_executable_hands_off_over_the_socket_and_relays_errors(
    world: Any, tmp_path: Path
) -> None:
    _, _, _, svc = world
    sock = tmp_path / "cni.sock"
    conf = {**CONF, "socket": str(sock)}

    def call(command: str, **kw: str) -> tuple[int, Any]:
        rc, out = shim.run(env(command, **kw), raw(conf))
        return rc, json.loads(out) if out else None

    rc, err = call("ADD")
    assert rc == 1 and err["code"] == spec.TRY_AGAIN_LATER and str(sock) in err["msg"]
    with PluginServer(sock, cni_routes(svc)):
        rc, res = call("ADD")
        assert rc == 0 and res["interfaces"][0]["sandbox"] == NETNS
        assert call("CHECK") == (0, None)
        rc, err = call("ADD", CNI_NETNS="not/absolute")
        assert rc == 1 and err["code"] == spec.INVALID_ENVIRONMENT
        assert err["cniVersion"] == "1.0.0"
        assert call("DEL") == (0, None)
    script = plugin_script("/usr/bin/python3")
    assert script.startswith("#!/usr/bin/python3 -IS\n") and "import controller" not in script
    assert "from controller" not in script, "the plugin script must stand alone"


# -- heddle cni install -------------------------------------------------------------------------
def test_install_writes_a_list_a_runtime_uses_as_is_and_never_someone_elses(
    tmp_path: Path,
) -> None:
    path, changed = install(tmp_path, "blue", "h1", "/run/x.sock")
    assert changed and path == tmp_path / "blue.conflist"
    conf = json.loads(path.read_text())
    assert conf["name"] == "blue" and conf["cniVersion"] == "1.0.0"
    assert conf["plugins"] == [{"type": "heddle-cni", "network": "blue", "host": "h1",
                                "socket": "/run/x.sock"}]  # fmt: skip
    assert install(tmp_path, "blue", "h1", "/run/x.sock") == (path, False)
    assert install(tmp_path, "blue", "h2", "/run/x.sock") == (path, True)
    (tmp_path / "red.conflist").write_text('{"plugins": [{"type": "bridge"}]}')
    with pytest.raises(Conflict):
        install(tmp_path, "red", "h1")
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"
    # what a runtime passes the plugin (the list's name and version with the plugin's
    # configuration) is an invocation heddle accepts, for this host only
    plugin = {"cniVersion": conf["cniVersion"], "name": conf["name"], **conf["plugins"][0]}
    inv = parse_invocation(env("ADD"), raw(plugin))
    assert inv.network == "blue"
    kv = MemoryKV()
    svc = CniService(kv, "h2", AgentWaiter(kv, FakeKernel()), lambda: True)
    with pytest.raises(CniError) as err:
        svc.accept(inv)
    assert err.value.code == spec.INVALID_CONFIG and "for host 'h1'" in err.value.msg

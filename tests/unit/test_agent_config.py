"""Agent settings: flags, TOML file, precedence and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.agent import load_config
from controller.cli import _parser
from controller.model.errors import InvalidRecord


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return _parser().parse_args(["--etcd", "http://e1:2379,http://e2:2379", "agent", *argv])


def test_flags_only() -> None:
    cfg = load_config(parse("--host", "h1", "--vtep", "192.0.2.1", "--no-plugin"))
    assert cfg.host == "h1" and cfg.vtep == "192.0.2.1" and cfg.backend == "kernel"
    assert cfg.etcd == ("http://e1:2379", "http://e2:2379")
    assert cfg.plugin_socket is None


def test_file_then_flags_win(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(
        'host = "h1"\nvtep = "192.0.2.1"\netcd = ["https://e9:2379"]\n'
        'resync_interval = 5.0\ncacert = "/ca.pem"\n'
    )
    cfg = load_config(parse("--config", str(f), "--vtep", "192.0.2.7"))
    assert cfg.vtep == "192.0.2.7" and cfg.resync_interval == 5.0
    assert cfg.etcd == ("https://e9:2379",) and cfg.cacert == "/ca.pem"
    assert cfg.plugin_socket == "/run/docker/plugins/heddle.sock"


@pytest.mark.parametrize(
    ("toml", "argv", "needle"),
    [
        ("", ("--vtep", "192.0.2.1"), "--host is required"),
        ("", ("--host", "h1"), "--vtep is required"),
        ("", ("--host", "H1", "--vtep", "192.0.2.1"), "--host"),
        ("", ("--host", "h1", "--vtep", "300.0.0.1"), "--vtep"),
        ("bogus = 1\n", ("--host", "h1", "--vtep", "192.0.2.1"), "unknown setting"),
        ("host = \n", (), "cannot read config"),
        ('host = "h1"\nvtep = "192.0.2.1"\nresync_interval = 0.0\n', (), "resync"),
    ],
)
def test_refusals(tmp_path: Path, toml: str, argv: tuple[str, ...], needle: str) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(toml)
    with pytest.raises(InvalidRecord, match=needle):
        load_config(parse("--config", str(f), *argv))

"""Agent settings: flags, TOML file, precedence and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.agent import load_config
from controller.cli.parser import build_parser as _parser
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


@pytest.mark.parametrize(
    ("value", "advertised"),
    [
        ("10.0.0.5:9101", "10.0.0.5:9101"),
        ("0.0.0.0:9101", "192.0.2.1:9101"),
        ("[::1]:9200", "[::1]:9200"),
    ],
)
def test_metrics_address_and_where_it_is_published(value: str, advertised: str) -> None:
    cfg = load_config(parse("--host", "h1", "--vtep", "192.0.2.1", "--metrics", value))
    assert cfg.metrics_advertised == advertised


@pytest.mark.parametrize("value", ["9101", "host:9101", "10.0.0.5:0", "10.0.0.5:70000", ":9101"])
def test_a_bad_metrics_address_is_refused(value: str) -> None:
    with pytest.raises(InvalidRecord, match="--metrics"):
        load_config(parse("--host", "h1", "--vtep", "192.0.2.1", "--metrics", value))


def test_status_records_carry_the_metrics_address_and_old_ones_still_read() -> None:
    from controller.model import codec
    from controller.model.records import HostStatus

    st = HostStatus("h1", 3, 1.0, True, metrics="10.0.0.5:9101")
    assert codec.decode_status(codec.encode_status(st)) == st
    old = '{"host": "h1", "revision": 3, "last_pass": 1.0, "ok": true}'
    assert codec.decode_status(old).metrics is None
    with pytest.raises(InvalidRecord, match="metrics"):
        codec.decode_status(
            '{"host": "h1", "revision": 3, "last_pass": 1, "ok": true, "metrics": 5}'
        )

"""The command line's parser: ``-o`` works before the command and after the verb alike."""

from __future__ import annotations

import pytest

from controller.cli.parser import build_parser as _parser


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["lab", "status"], "table"),
        (["-o", "json", "lab", "status"], "json"),
        (["lab", "status", "-o", "json"], "json"),
        (["network", "ls", "--output", "json"], "json"),
        (["-o", "json", "host", "ls"], "json"),
        (["endpoint", "ls", "blue", "-o", "json"], "json"),
    ],
)
def test_output_is_accepted_before_the_command_and_after_the_verb(
    argv: list[str], want: str
) -> None:
    assert _parser().parse_args(argv).output == want


def test_an_unknown_output_format_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["network", "ls", "-o", "yaml"])
    assert info.value.code == 2

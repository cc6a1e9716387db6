"""Command start-up: a command loads only the modules it needs, and every command stays listed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from warmstart.cli import COMMAND_MODULES, build_parser, chosen_command

HEAVY_MODULES = ("numpy", "aiohttp", "warmstart.engine")


@pytest.mark.parametrize("argv", [["pull", "--help"], ["-v", "store", "ls"], ["fetch", "--help"]])
def test_store_commands_skip_heavy_imports(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from warmstart.cli import build_parser\n"
        f"build_parser({argv!r})\n"
        f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_engine_names_load_on_first_use() -> None:
    code = (
        "import sys, warmstart\n"
        "before = 'warmstart.engine' in sys.modules\n"
        "engine = warmstart.Engine\n"
        "print(before, 'warmstart.engine' in sys.modules, engine.__module__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "True", "warmstart.engine.engine"]


def test_unknown_attribute_raises() -> None:
    import warmstart

    with pytest.raises(AttributeError, match="no_such_name"):
        _ = warmstart.no_such_name  # type: ignore[attr-defined]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser(["--help"]).parse_args(["--help"])
    listed = capsys.readouterr().out
    for command in COMMAND_MODULES:
        assert command in listed


@pytest.mark.parametrize("command", sorted(COMMAND_MODULES))
def test_each_command_builds_alone(command: str) -> None:
    parser = build_parser([command])
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([command, "--help"])
    assert exit_info.value.code == 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["pull", "x"], "pull"),
        (["-v", "-v", "serve"], "serve"),
        (["--help"], None),
        (["nonsense", "pull"], None),
        ([], None),
    ],
)
def test_chosen_command(argv: list[str], expected: str | None) -> None:
    assert chosen_command(argv) == expected

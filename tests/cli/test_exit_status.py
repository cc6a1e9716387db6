"""Exit status of every command: 2 for an invalid command line, 1 for a failed operation."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from warmstart import LayerStore
from warmstart.cli import main

DIGEST = "sha256:" + "0" * 64
# Nothing listens on the discard port, so a command that got past its checks would fail with
# a connection error and exit 1 instead of 2.
UNREACHABLE = "127.0.0.1:9/absent:v1"


def _exit_status(arguments: list[str]) -> int:
    try:
        return main(arguments)
    except SystemExit as exit_info:
        # argparse exits with 2 itself.
        return int(exit_info.code or 0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["pull", "UPPER/case"], 'invalid reference "UPPER/case"', id="pull-reference"),
        pytest.param(
            ["pull", UNREACHABLE, "--platform", "linux"],
            'invalid platform "linux": a platform is os/architecture',
            id="pull-platform",
        ),
        pytest.param(
            ["pull", UNREACHABLE, "--stall-timeout", "-1"],
            "argument --stall-timeout: invalid value '-1'",
            id="pull-stall-timeout",
        ),
        pytest.param(
            ["pull", UNREACHABLE, "--stall-timeout", "0"],
            "argument --stall-timeout: invalid value '0'",
            id="pull-stall-timeout-zero",
        ),
        pytest.param(
            ["fetch", "http://127.0.0.1:9/blob", "--digest", DIGEST, "--stall-timeout", "0"],
            "argument --stall-timeout: invalid value '0'",
            id="fetch-stall-timeout-zero",
        ),
        pytest.param(
            ["pull", UNREACHABLE, "--tag", "a b"],
            'argument --tag: invalid tag "a b"',
            id="pull-tag",
        ),
        pytest.param(
            ["store", "import", ".", "--tag", ""],
            'argument --tag: invalid tag ""',
            id="store-import-tag",
        ),
        pytest.param(
            ["pull", "127.0.0.1:99999/absent:v1"],
            "a registry port is a number from 1 to 65535",
            id="pull-port",
        ),
        pytest.param(
            ["pull", UNREACHABLE, "--store", ""], "argument --store: empty path", id="empty-store"
        ),
        pytest.param(
            ["pull", UNREACHABLE, "--unpack", ""],
            "argument --unpack: empty path",
            id="empty-unpack",
        ),
        pytest.param(["unpack", "app:v1", "--to", ""], "argument --to: empty path", id="empty-to"),
        pytest.param(
            ["prefetch", UNREACHABLE, "--to", ""], "argument --to: empty path", id="prefetch-empty"
        ),
        pytest.param(
            ["prefetch", UNREACHABLE, "--to", "ftp://127.0.0.1:9/store"],
            "argument --to: invalid mirror URL 'ftp://127.0.0.1:9/store'",
            id="prefetch-scheme",
        ),
        pytest.param(["fetch", "notaurl", "--digest", DIGEST], 'invalid URL "notaurl"', id="url"),
        pytest.param(
            ["fetch", "http://127.0.0.1:9/blob", "--digest", "nope"],
            'invalid digest "nope"',
            id="fetch-digest",
        ),
        pytest.param(["calibrate", "UPPER/case"], "invalid reference", id="calibrate-reference"),
        pytest.param(["prefetch", "UPPER/case"], "invalid reference", id="prefetch-reference"),
        pytest.param(
            ["prefetch", UNREACHABLE, "--concurrency", "0"],
            "argument --concurrency: invalid value 0",
            id="prefetch-concurrency",
        ),
        pytest.param(
            ["mirror", "--connections", "0"],
            "argument --connections: invalid value 0",
            id="mirror-connections",
        ),
        pytest.param(
            ["mirror", "--tag-ttl", "-1"], "argument --tag-ttl: invalid value", id="mirror-ttl"
        ),
        pytest.param(
            ["mirror", "--listen", "127.0.0.1:99999"],
            "argument --listen: invalid address '127.0.0.1:99999'",
            id="mirror-listen-port",
        ),
        pytest.param(["serve", "--listen", "nowhere"], "invalid listen address", id="serve-listen"),
        pytest.param(["replay", "--seed", "-1"], "argument --seed: invalid value", id="seed"),
    ],
)
def test_invalid_value_exits_2(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = _exit_status(arguments)

    error = capsys.readouterr().err
    assert status == 2, error
    assert message in error
    assert "Traceback" not in error


def test_missing_input_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent"
    store = ["--store", str(tmp_path / "store")]
    commands = {
        "store import": ["store", "import", str(missing), *store],
        "pull --ca-cert": ["pull", UNREACHABLE, "--ca-cert", str(missing), *store],
        "mirror --token-file": ["mirror", "--token-file", str(missing), *store],
        "serve --token-file": ["serve", "--token-file", str(missing)],
        "serve --config": ["serve", "--config", str(missing)],
        "replay TRACE": ["replay", str(missing)],
    }
    for name, arguments in commands.items():
        status = _exit_status(arguments)

        error = capsys.readouterr().err
        assert status == 2, (name, error)
        last_line = error.splitlines()[-1]
        assert last_line.startswith("warmstart "), (name, error)
        assert "error: " in last_line, (name, error)
        assert str(missing) in last_line, (name, error)
        assert "Traceback" not in error, name


def test_unreadable_input_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The tests run as root, which reads a file whatever its mode, so the unreadable inputs are
    # a directory where a file belongs, a FIFO and a path through a regular file.
    directory = tmp_path / "directory"
    directory.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    through_file = tmp_path / "file" / "child"
    through_file.parent.write_bytes(b"")
    store = ["--store", str(tmp_path / "store")]
    cases = [
        ("store import", ["store", "import", str(fifo), *store], fifo, "is not a regular file"),
        (
            "store import",
            ["store", "import", str(through_file), *store],
            through_file,
            "cannot read",
        ),
        (
            "pull --ca-cert",
            ["pull", UNREACHABLE, "--ca-cert", str(directory), *store],
            directory,
            "is a directory",
        ),
        (
            "pull --ca-cert",
            ["pull", UNREACHABLE, "--ca-cert", str(fifo), *store],
            fifo,
            "is not a regular file",
        ),
        (
            "pull --ca-cert",
            ["pull", UNREACHABLE, "--ca-cert", str(through_file), *store],
            through_file,
            "cannot read",
        ),
        ("mirror --token-file", ["mirror", "--token-file", str(directory), *store], directory, ""),
        ("serve --token-file", ["serve", "--token-file", str(directory)], directory, ""),
        ("serve --config", ["serve", "--config", str(directory)], directory, ""),
        ("replay TRACE", ["replay", str(directory)], directory, ""),
    ]
    for name, arguments, path, reason in cases:
        status = _exit_status(arguments)

        error = capsys.readouterr().err
        assert status == 2, (name, error)
        last_line = error.splitlines()[-1]
        assert last_line.startswith(f"warmstart {name.split()[0]}"), (name, error)
        assert "error: " in last_line, (name, error)
        assert str(path) in last_line, (name, error)
        assert reason in last_line, (name, error)
        assert "Traceback" not in error, name


def test_failed_operation_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    assert _exit_status(["store", "du", "--store", str(store)]) == 1
    assert "no layer store at" in capsys.readouterr().err

    LayerStore(store)
    target = tmp_path / "out"
    status = _exit_status(["unpack", "nosuch:v1", "--to", str(target), "--store", str(store)])
    assert status == 1
    assert "is not in the store" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "mirror"])
def test_listen_address_in_use_exits_1(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        arguments = [command, "--listen", address]
        if command == "mirror":
            arguments += ["--store", str(tmp_path / "store")]
        status = _exit_status(arguments)

    error = capsys.readouterr().err
    assert status == 1
    assert f"cannot listen on {address}: address already in use" in error
    assert "choose another --listen address" in error

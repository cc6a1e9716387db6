"""Command-line arguments of ``replay`` and ``calibrate`` are checked before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.registry.real import RegistryRepository
from tests.signals import default_sigint
from warmstart.cli import main
from warmstart.replay.report import REPORT_FILES

SHORT = ["--duration", "300", "--jobs", "1", "--cache", "cold"]

# An address nothing listens on: a calibrate that got past its argument checks would fail
# with a connection error instead of the expected message.
UNREACHABLE = "127.0.0.1:9/absent:v1"


def _usage_error(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(
            ["replay", "--seed", "-1"],
            "argument --seed: invalid value -1; use a whole number of at least 0",
            id="seed",
        ),
        pytest.param(
            ["replay", "--jobs", "0"], "argument --jobs: invalid value 0;", id="jobs-zero"
        ),
        pytest.param(
            ["replay", "--jobs", "-3"],
            "invalid value -3; use a whole number of at least 1",
            id="jobs-negative",
        ),
        pytest.param(
            ["replay", "--jobs", "1.5"], "argument --jobs: invalid value '1.5'", id="jobs-fraction"
        ),
    ],
)
def test_replay_rejects_bad_count(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in _usage_error(arguments, capsys)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        pytest.param(
            "--connections",
            "0",
            "invalid value 0; use a whole number from 1 to 1024",
            id="connections-zero",
        ),
        pytest.param(
            "--connections", "-4", "invalid value -4; use a whole", id="connections-negative"
        ),
        pytest.param("--connections", "100000", "from 1 to 1024", id="connections-many"),
        pytest.param("--chunk-size", "0", "at least 65536 bytes", id="chunk-zero"),
        pytest.param("--chunk-size", "1", "at least 65536 bytes", id="chunk-one"),
        pytest.param("--chunk-size", "-1", "invalid size '-1'", id="chunk-negative"),
        pytest.param("--chunk-size", "inf", "invalid size 'inf'", id="chunk-inf"),
        pytest.param("--repeat", "0", "argument --repeat: invalid value 0", id="repeat"),
    ],
)
def test_calibrate_rejects_bad_option(
    option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in _usage_error(["calibrate", UNREACHABLE, option, value], capsys)


def test_calibrate_unknown_profile_is_clear(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["calibrate", UNREACHABLE, "--insecure", "--profile", "nonexistent"])

    error = capsys.readouterr().err
    assert status == 2
    assert "profile 'nonexistent' not found" in error
    assert "Traceback" not in error


def test_calibrate_checks_output_before_pulling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "nodir" / "x.toml"

    status = main(["calibrate", UNREACHABLE, "--insecure", "--output", str(output)])

    error = capsys.readouterr().err
    assert status == 2
    assert "cannot write --output" in error
    assert "not found" in error


def test_replay_checks_report_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    started = time.monotonic()

    status = main(["replay", *SHORT, "--policy", "hpa", "--report", str(blocker / "out")])

    assert status == 2
    assert "cannot write --report" in capsys.readouterr().err
    assert time.monotonic() - started < 5


def test_replay_runs_repeated_policy_once(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["replay", *SHORT, "--policy", "hpa", "--policy", "hpa", "--cache", "cold"]

    status = main([*arguments, "--json"])

    document = json.loads(capsys.readouterr().out)
    assert status == 0
    assert [(r["policy"], r["cache"]) for r in document["runs"]] == [("hpa", "cold")]


def test_replay_report_replaces_earlier_plots(tmp_path: Path) -> None:
    report = tmp_path / "out"
    report.mkdir()
    stale = report / "capacity-prefetch.png"
    stale.write_bytes(b"an earlier run's plot")
    notes = report / "notes.txt"
    notes.write_text("kept")

    status = main(["replay", *SHORT, "--policy", "hpa", "--report", str(report)])

    assert status == 0
    assert not stale.exists()
    assert notes.read_text() == "kept"
    assert (report / "capacity-cold.png").is_file()
    assert "capacity-*.png" in REPORT_FILES


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])
def test_calibrate_stop_signal_removes_temporary_store(
    registry_repo: RegistryRepository, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    # A 64 MiB layer keeps the pulls busy long enough to be interrupted.
    registry_repo.push_generated("v1", [os.urandom(64 << 20)], compress=False)
    work = tmp_path / "tmp"
    work.mkdir()
    command = [
        sys.executable,
        "-m",
        "warmstart",
        "calibrate",
        f"{registry_repo.reference_prefix}:v1",
        "--insecure",
        "--repeat",
        "20",
    ]
    process = subprocess.Popen(
        command,
        env={**os.environ, "TMPDIR": str(work)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 30
        while not any(work.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(work.iterdir()), "calibrate created no temporary store within 30 s"
        time.sleep(0.5)
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 130, stderr.decode()
    assert stderr.decode().endswith("warmstart: interrupted\n")
    assert list(work.iterdir()) == []

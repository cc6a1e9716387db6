"""The progress line `warmstart pull` draws on a terminal."""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass

import pytest

from warmstart.cli.pull import ProgressLine, parse_size, parse_stall_timeout


@dataclass
class Snapshot:
    total_bytes: int
    fetched_bytes: int
    reused_bytes: int
    blobs_total: int
    blobs_done: int
    finished: bool


def test_progress_line_shows_bytes_rate_eta_and_blobs() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream)
    line.started -= 2.0  # as if the pull started two seconds ago
    line(Snapshot(100 << 20, 40 << 20, 10 << 20, 5, 2, False))  # type: ignore[arg-type]
    text = stream.getvalue()
    assert text.startswith("\r50.0 MiB / 100.0 MiB")
    assert "/s" in text
    assert "ETA 3s" in text or "ETA 2s" in text
    assert text.rstrip().endswith("blobs 2/5")
    line(Snapshot(100 << 20, 90 << 20, 10 << 20, 5, 5, True))  # type: ignore[arg-type]
    assert stream.getvalue().endswith("\n")


def test_parse_size_units() -> None:
    assert parse_size("16M") == 16 << 20
    assert parse_size("512k") == 512 << 10
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("1048576") == 1 << 20


@pytest.mark.parametrize(
    "text", ["-5", "abc", "nan", "inf", "99999999999999999999999", "20000000000G"]
)
def test_parse_size_rejects_with_value(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"invalid size '{text}'"):
        parse_size(text)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "1e300"])
def test_parse_stall_timeout_rejects_with_value(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"invalid value '{text}'"):
        parse_stall_timeout(text)

"""Formatting shared by the commands: tables for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warmstart import PullReport

__all__ = ["format_bytes", "format_pulled", "print_json", "print_table"]


def format_bytes(count: int) -> str:
    """Format a byte count with binary units, for example ``1.5 GiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_pulled(report: PullReport) -> str:
    """Describe a pull in one line: the reference, the tag, the image manifest and its index."""
    tagged = "" if report.tag == report.reference else f" as {report.tag}"
    index = "" if report.index_digest is None else f" from index {report.index_digest}"
    return f"pulled {report.reference}{tagged}  {report.manifest_digest}{index}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows as left-aligned columns under a header line."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    line = "  ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True))
    print(line.rstrip())
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def print_json(value: Any) -> None:
    """Print one JSON document on standard output."""
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")

"""The usage error of the command line, and the path and platform types of its options."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Callable
from pathlib import Path

from warmstart import _native

__all__ = [
    "UsageError",
    "check_with",
    "input_problem",
    "parse_input_file",
    "parse_path",
    "parse_platform",
]


class UsageError(Exception):
    """The command line is invalid: an option's value, or an input file it names, is wrong.

    ``main`` prints the message as ``warmstart COMMAND: error: MESSAGE`` and exits with 2, as
    argparse does for its own checks.
    """


def parse_path(text: str) -> Path:
    """Parse a file or directory path. An empty one is invalid: ``Path("")`` is the current
    directory, and an empty value is usually an unset shell variable, not a wish to write there.
    """
    if not text:
        raise argparse.ArgumentTypeError("empty path; name a file or directory (. for this one)")
    return Path(text)


def parse_input_file(text: str) -> Path:
    """Parse the path of an input file that must exist and be readable, such as a certificate."""
    path = parse_path(text)
    problem = input_problem(path, expected="a file", directory_allowed=False)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return path


def input_problem(path: Path, *, expected: str, directory_allowed: bool) -> str | None:
    """Return why `path` cannot be read as an input, or ``None`` when it can.

    `path` must be a regular file, or a directory when `directory_allowed`, and this process
    must be able to open it. The message names the path, the reason and, with `expected`
    (such as ``"a file"``), what to name instead.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path} does not exist; name {expected}"
    except OSError as error:
        return f"cannot read {path}: {error.strerror}"
    if stat.S_ISDIR(mode) and not directory_allowed:
        return f"{path} is a directory; name {expected}"
    if not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):
        # Opening a FIFO for reading blocks until a writer opens it, so special files are
        # rejected without opening them.
        return f"{path} is not a regular file ({_file_kind(mode)}); name {expected}"
    try:
        if stat.S_ISDIR(mode):
            with os.scandir(path):
                pass
        else:
            with path.open("rb"):
                pass
    except OSError as error:
        return f"cannot read {path}: {error.strerror}"
    return None


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def check_with(parse: Callable[[str], str], text: str) -> str:
    """Check `text` with one of the layer store's parsers and return it unchanged.

    The store's own parsers, so that the command line accepts what a pull accepts.
    """
    try:
        parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def parse_platform(text: str) -> str:
    """Check an ``os/architecture[/variant]`` platform; returns it unchanged."""
    return check_with(_native.parse_platform_string, text)

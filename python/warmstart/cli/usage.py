"""The usage error of the command line, and the path type of its options."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

__all__ = ["UsageError", "check_with", "parse_path"]


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


def check_with(parse: Callable[[str], str], text: str) -> str:
    """Check `text` with one of the layer store's parsers and return it unchanged.

    The store's own parsers, so that the command line accepts what a pull accepts.
    """
    try:
        parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text

"""The usage error of the command line, for checks argparse cannot make on its own."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """The command line is invalid: an option's value, or an input file it names, is wrong.

    ``main`` prints the message as ``warmstart COMMAND: error: MESSAGE`` and exits with 2, as
    argparse does for its own checks.
    """

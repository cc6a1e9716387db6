"""The ``warmstart`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from warmstart import __version__
from warmstart.cli import calibrate, mirror, prefetch, pull, replay, serve, store, unpack
from warmstart.errors import WarmstartError

__all__ = ["console_main", "main"]

# Long-running commands, which log at info by default.
SERVICES = frozenset({"serve", "mirror"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warmstart",
        description="Autoscaling for ML inference fleets with fast, verified image pulls.",
    )
    parser.add_argument("--version", action="version", version=f"warmstart {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pull.add_parsers(commands)
    store.add_parser(commands)
    mirror.add_parser(commands)
    prefetch.add_parser(commands)
    serve.add_parser(commands)
    unpack.add_parser(commands)
    replay.add_parser(commands)
    calibrate.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(arguments.verbose, logging.DEBUG)
    if arguments.command in SERVICES:
        # Services log starts, stops and connections at info; an operator expects to see them.
        level = min(level, logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        status: int = arguments.run(arguments)
    except BrokenPipeError:
        # The reader of our output went away (`| head`); that is not an error of ours.
        sys.stdout = None
        return 0
    except (WarmstartError, OSError) as error:
        print(f"warmstart: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("warmstart: interrupted", file=sys.stderr)
        return 130
    return status


def console_main() -> None:
    """Entry point of the ``warmstart`` script."""
    sys.exit(main())

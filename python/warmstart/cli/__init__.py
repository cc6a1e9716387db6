"""The ``warmstart`` command line."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from warmstart import __version__
from warmstart.cli import interrupt
from warmstart.cli.usage import UsageError
from warmstart.errors import WarmstartError

__all__ = ["console_main", "main"]

EXIT_STATUS = """\
exit status:
  0    success
  1    the operation failed: a registry, store or file system error
  2    invalid command line: an option or argument value, or an input file that does not exist
  130  interrupted with Ctrl-C
serve and mirror stop cleanly on Ctrl-C or SIGTERM and then exit with 0."""

# Long-running commands, which log at info by default.
SERVICES = frozenset({"serve", "mirror"})

# The module that defines each command, in the order `warmstart --help` lists them. A command
# imports only its own module, so `warmstart pull` does not load numpy, aiohttp or the engine.
COMMAND_MODULES = {
    "pull": "pull",
    "fetch": "pull",
    "store": "store",
    "mirror": "mirror",
    "prefetch": "prefetch",
    "serve": "serve",
    "unpack": "unpack",
    "replay": "replay",
    "calibrate": "calibrate",
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the parser; with ``argv`` naming a command, only that command's module is loaded."""
    parser = argparse.ArgumentParser(
        prog="warmstart",
        description="Autoscaling for ML inference fleets with fast, verified image pulls.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"warmstart {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = chosen_command(argv)
    if command is None:
        modules = list(dict.fromkeys(COMMAND_MODULES.values()))
    else:
        modules = [COMMAND_MODULES[command]]
    for name in modules:
        module = importlib.import_module(f"warmstart.cli.{name}")
        if hasattr(module, "add_parsers"):
            module.add_parsers(commands)
        else:
            module.add_parser(commands)
    return parser


def chosen_command(argv: Sequence[str] | None) -> str | None:
    """Return the command ``argv`` names, or None when it names none (as in ``--help``).

    The top-level options take no value, so the first argument not starting with a dash is the
    command.
    """
    for argument in argv or ():
        if not argument.startswith("-"):
            return argument if argument in COMMAND_MODULES else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status, as ``EXIT_STATUS`` lists."""
    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        # Caught here so that it covers loading the command's module and parsing too.
        # NOTE: Ctrl-C while the script imports the warmstart package, in the first 0.1 s or
        # so, comes before this handler and still prints a traceback.
        print("warmstart: interrupted", file=sys.stderr)
        return 130


def _run(argv: Sequence[str]) -> int:
    parser = build_parser(argv)
    arguments = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(arguments.verbose, logging.DEBUG)
    if arguments.command in SERVICES:
        # Services log starts, stops and connections at info; an operator expects to see them.
        level = min(level, logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        status: int = arguments.run(arguments)
    except UsageError as error:
        print(f"warmstart {arguments.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of our output went away (`| head`); that is not an error of ours.
        sys.stdout = None
        return 0
    except (WarmstartError, OSError) as error:
        print(f"warmstart: error: {error}", file=sys.stderr)
        return 1
    return status


def console_main() -> None:
    """Entry point of the ``warmstart`` script."""
    status = main()
    if interrupt.abandoned():
        # A native call abandoned on Ctrl-C may still run in its thread. Ending the process
        # here stops it, where the interpreter's shutdown could wait for it or break it.
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        os._exit(status)
    sys.exit(status)

"""``warmstart calibrate``: measure real pulls and write a profile's network numbers."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("calibrate", help="measure pulls from a registry")
    parser.add_argument("reference")
    parser.set_defaults(run=lambda arguments: 1)

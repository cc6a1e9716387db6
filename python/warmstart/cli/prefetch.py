"""``warmstart prefetch``: pull images into a store, or into a running mirror, ahead of need."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from warmstart.cli.mirror import token_from_file
from warmstart.cli.output import format_bytes, print_json
from warmstart.cli.pull import parse_count, parse_platform, parse_reference
from warmstart.cli.store import open_store
from warmstart.cli.usage import parse_path
from warmstart.mirror.prefetch import prefetch, prefetch_mirror, registry_of, report_json

__all__ = ["add_parser"]


def parse_destination(text: str) -> str:
    """Check ``--to``: an HTTP(S) mirror URL, or a store directory that is not empty."""
    scheme, separator, _ = text.partition("://")
    if separator and scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(
            f"invalid mirror URL {text!r}; use http:// or https://, or a store directory"
        )
    parse_path(text)
    return text


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "prefetch",
        help="pull images into the store or a mirror ahead of a scale-out",
        description="Pull whole images ahead of need: into a store directory, or with "
        "--to URL into a running warmstart mirror's store.",
    )
    parser.add_argument(
        "reference",
        nargs="+",
        type=parse_reference,
        help="image reference, e.g. localhost:5000/llm:v1",
    )
    parser.add_argument(
        "--to",
        type=parse_destination,
        default=None,
        metavar="URL|DIR",
        help="a mirror URL (http://127.0.0.1:5050) or a store directory (default: "
        "$WARMSTART_STORE or ~/.cache/warmstart/store)",
    )
    parser.add_argument(
        "--token-file",
        type=parse_path,
        default=None,
        metavar="FILE",
        help="bearer token file of the mirror, as given to 'warmstart mirror --token-file'",
    )
    parser.add_argument(
        "--platform",
        type=parse_platform,
        default=None,
        help="os/arch[/variant] (default: this host)",
    )
    parser.add_argument(
        "--concurrency",
        type=parse_count,
        default=2,
        metavar="N",
        help="images pulled at once (default: 2)",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="use plain HTTP for the images' registries"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    parser.set_defaults(run=run_prefetch)


def run_prefetch(arguments: argparse.Namespace) -> int:
    references: list[str] = arguments.reference
    target: str | None = arguments.to
    if target is not None and target.startswith(("http://", "https://")):
        token = token_from_file(arguments.token_file)
        result = asyncio.run(
            prefetch_mirror(target, references, platform=arguments.platform, token=token)
        )
    else:
        arguments.store = Path(target) if target is not None else None
        store = open_store(arguments)
        insecure = sorted({registry_of(r) for r in references}) if arguments.insecure else []
        reports = asyncio.run(
            prefetch(
                store,
                references,
                platform=arguments.platform,
                concurrency=arguments.concurrency,
                insecure_registries=insecure,
            )
        )
        result = {
            "images": [report_json(r, ref) for r, ref in zip(reports, references, strict=True)]
        }
    images: list[dict[str, Any]] = result["images"]
    if arguments.json:
        print_json(result)
    else:
        for image in images:
            if "error" in image:
                print(f"{image['reference']}: failed: {image['error']}")
            else:
                print(
                    f"{image['reference']}  {image['manifest_digest']}  fetched"
                    f" {format_bytes(image['bytes_fetched'])}, reused"
                    f" {format_bytes(image['bytes_reused'])} in {image['seconds']:.2f} s"
                )
    return 1 if any("error" in image for image in images) else 0

"""``warmstart unpack`` and ``warmstart pull --unpack``: materialize an image as a filesystem."""

from __future__ import annotations

import argparse
import asyncio
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warmstart import LayerStore, PullProgress, PullReport, UnpackReport
from warmstart.cli.interrupt import interruptible
from warmstart.cli.output import format_bytes, format_pulled, print_json
from warmstart.cli.store import open_store
from warmstart.cli.usage import parse_path, parse_platform
from warmstart.errors import StoreError, TagNotFoundError

__all__ = ["add_parser", "add_pull_arguments", "run_pull_and_unpack"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "unpack",
        help="unpack an image from the store into a directory",
        description="Unpack an image from the store: one directory per layer for an overlay "
        "mount (with a lowerdir file naming them top-most first), or with --flatten one merged "
        "root filesystem in DIR/rootfs. Running it again after a crash finishes the job.",
    )
    parser.add_argument("reference", help="tag or manifest digest of an image in the store")
    parser.add_argument(
        "--platform",
        type=parse_platform,
        default=None,
        help="os/arch[/variant] to select from an index (default: this host)",
    )
    parser.add_argument(
        "--to", type=parse_path, required=True, metavar="DIR", help="target directory"
    )
    parser.add_argument(
        "--store",
        type=parse_path,
        default=None,
        help="store directory (default: $WARMSTART_STORE or ~/.cache/warmstart/store)",
    )
    add_flatten(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    parser.set_defaults(run=run_unpack)


def add_flatten(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--flatten",
        action="store_true",
        help="merge the layers into DIR/rootfs instead of one directory per layer",
    )


def add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--unpack DIR`` and ``--flatten`` to the ``pull`` command."""
    parser.add_argument(
        "--unpack",
        type=parse_path,
        default=None,
        metavar="DIR",
        help="also unpack the image into DIR, extracting each layer while it downloads",
    )
    add_flatten(parser)


def run_unpack(arguments: argparse.Namespace) -> int:
    store = open_store(arguments, must_exist=True)
    try:
        report = interruptible(
            lambda: store.unpack(
                arguments.reference,
                arguments.to,
                flatten=arguments.flatten,
                platform=arguments.platform,
            )
        )
    except TagNotFoundError as error:
        if error.tag != arguments.reference:
            raise
        raise StoreError(not_in_store_message(arguments, store.root)) from None
    print_report(report, arguments.json)
    return 0


def not_in_store_message(arguments: argparse.Namespace, root: Path) -> str:
    """Return the error for an image missing from the store, with the commands that pull it."""
    store_option = [] if arguments.store is None else ["--store", str(arguments.store)]
    pull = ["warmstart", "pull", arguments.reference, *store_option]
    pull_and_unpack = [*pull, "--unpack", str(arguments.to)]
    if arguments.flatten:
        pull_and_unpack.append("--flatten")
    return (
        f"image {arguments.reference!r} is not in the store at {root}; pull it with "
        f"`{shlex.join(pull)}`, or pull and unpack it at once with `{shlex.join(pull_and_unpack)}`"
    )


def run_pull_and_unpack(
    arguments: argparse.Namespace,
    store: LayerStore,
    insecure_registries: list[str],
    progress: Callable[[PullProgress], object] | None,
) -> int:
    """Run ``pull --unpack DIR`` with the options the ``pull`` command parsed."""

    async def pull() -> tuple[PullReport, UnpackReport]:
        return await store.pull_and_unpack(
            arguments.reference,
            arguments.unpack,
            flatten=arguments.flatten,
            platform=arguments.platform,
            connections=arguments.connections,
            chunk_size=arguments.chunk_size,
            tag=arguments.tag,
            insecure_registries=insecure_registries,
            ca_certificates=arguments.ca_cert,
            stall_timeout_s=arguments.stall_timeout,
            progress=progress,
        )

    pulled, unpacked = asyncio.run(pull())
    if not arguments.json:
        print(
            f"{format_pulled(pulled)}"
            f"  ({format_bytes(pulled.bytes_fetched)} fetched in {pulled.seconds:.2f} s)"
        )
    print_report(unpacked, arguments.json, pulled=pulled)
    return 0


def report_json(report: UnpackReport) -> dict[str, Any]:
    return {
        "target": str(report.target),
        "manifest_digest": report.manifest_digest,
        "layout": report.layout,
        "result": str(report.result),
        "seconds": round(report.seconds, 6),
        "warnings": report.warnings,
        "layers": [
            {
                "digest": layer.digest,
                "diff_id": layer.diff_id,
                "media_type": layer.media_type,
                "compressed_bytes": layer.compressed_bytes,
                "uncompressed_bytes": layer.uncompressed_bytes,
                "entries": layer.entries,
                "reused": layer.reused,
                "seconds": round(layer.seconds, 6),
            }
            for layer in report.layers
        ],
    }


def print_report(report: UnpackReport, as_json: bool, pulled: PullReport | None = None) -> None:
    if as_json:
        document = report_json(report)
        if pulled is not None:
            document["pull"] = {
                "reference": pulled.reference,
                "tag": pulled.tag,
                "manifest_digest": pulled.manifest_digest,
                "index_digest": pulled.index_digest,
                "bytes_fetched": pulled.bytes_fetched,
                "seconds": round(pulled.seconds, 6),
            }
        print_json(document)
        return
    extracted = [layer for layer in report.layers if not layer.reused]
    uncompressed = sum(layer.uncompressed_bytes for layer in extracted)
    print(
        f"unpacked {report.manifest_digest} ({report.layout}) to {report.result}: "
        f"{len(extracted)} of {len(report.layers)} layers extracted, "
        f"{format_bytes(uncompressed)} in {report.seconds:.2f} s"
    )
    for warning in report.warnings:
        print(f"warning: {warning}")

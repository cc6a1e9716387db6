"""``warmstart pull`` and ``warmstart fetch``: download images and artifacts into the store."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from warmstart import BlobReport, PullProgress, PullReport, _native
from warmstart.cli import unpack
from warmstart.cli.output import format_bytes, format_pulled, print_json
from warmstart.cli.store import open_store, parse_tag
from warmstart.cli.usage import (
    UsageError,
    check_with,
    parse_input_file,
    parse_path,
    parse_platform,
)
from warmstart.store import DEFAULT_CONNECTIONS, MAX_CONNECTIONS, MIN_CHUNK_SIZE

__all__ = [
    "add_parsers",
    "parse_chunk_size",
    "parse_connections",
    "parse_count",
    "parse_digest",
    "parse_platform",
    "parse_reference",
    "parse_seconds",
    "parse_size",
    "parse_stall_timeout",
    "parse_url",
    "writable_directory_error",
]

UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# Sizes and seconds below this fit the native layer's unsigned 64-bit byte counts and durations.
NATIVE_LIMIT = 2.0**64


def parse_size(text: str) -> int:
    """Parse a byte count such as ``16M``, ``512k`` or ``1048576`` (binary units)."""
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = cleaned[-1:] if cleaned[-1:] in UNITS else ""
    number = cleaned[: len(cleaned) - len(unit)]
    try:
        value = float(number) * UNITS[unit]
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or value >= NATIVE_LIMIT:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}; use a byte count below 2**64 such as 16M, 512k or 1048576"
        )
    return int(value)


def parse_count(text: str, minimum: int = 1, maximum: int | None = None) -> int:
    """Parse a whole number from ``minimum`` to ``maximum`` (no bound when None)."""
    # argparse prefixes "argument --OPTION: ", so the message names no quantity itself, because
    # the same parser reads --seed, --jobs, --repeat and --connections.
    bound = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}; use a whole number {bound}"
        ) from None
    if value < minimum or (maximum is not None and value > maximum):
        raise argparse.ArgumentTypeError(f"invalid value {value}; use a whole number {bound}")
    return value


def parse_seconds(text: str, positive: bool = False) -> float:
    """Parse a duration in seconds: a finite number, at least 0, or above 0 when `positive`."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "above 0" if positive else "0 or more"
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}; use a finite number of seconds, {bound}"
        )
    return value


def parse_stall_timeout(text: str) -> float:
    """Parse a stall timeout in seconds: a finite number above 0 and below 2**64."""
    value = parse_seconds(text, positive=True)
    if value >= NATIVE_LIMIT:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}; use a finite number of seconds, above 0 and below 2**64"
        )
    return value


def parse_reference(text: str) -> str:
    """Check an image reference such as ``localhost:5000/llm:v1``; returns it unchanged."""
    return check_with(_native.parse_reference_string, text)


def parse_url(text: str) -> str:
    """Check an HTTP or HTTPS URL; returns it unchanged."""
    return check_with(_native.parse_url_string, text)


def parse_digest(text: str) -> str:
    """Check a digest such as ``sha256:<64 hex digits>``; returns it unchanged."""
    return check_with(_native.parse_digest_string, text)


def parse_connections(text: str) -> int:
    """Parse a connection count from 1 to ``MAX_CONNECTIONS``."""
    return parse_count(text, 1, MAX_CONNECTIONS)


def parse_chunk_size(text: str) -> int:
    """Parse a range size (see ``parse_size``) of at least the store's ``MIN_CHUNK_SIZE``."""
    value = parse_size(text)
    if value < MIN_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(
            f"chunk size must be at least {MIN_CHUNK_SIZE} bytes (64k), got {text!r}"
        )
    return value


def writable_directory_error(directory: Path) -> str | None:
    """Return why files cannot be created in ``directory``, or None when they can."""
    if not directory.is_dir():
        return f"directory {str(directory)!r} not found"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {str(directory)!r} is not writable"
    return None


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        type=parse_path,
        default=None,
        help="store directory (default: $WARMSTART_STORE or ~/.cache/warmstart/store)",
    )
    parser.add_argument(
        "--connections",
        type=parse_connections,
        default=DEFAULT_CONNECTIONS,
        metavar="N",
        help=f"parallel connections per host (default: {DEFAULT_CONNECTIONS})",
    )
    parser.add_argument(
        "--chunk-size",
        type=parse_chunk_size,
        default=16 << 20,
        metavar="SIZE",
        help="byte range per request for large blobs, e.g. 16M (default: 16M)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=parse_stall_timeout,
        default=30.0,
        metavar="SECONDS",
        help="abandon and retry a connection that sends nothing for this long (default: 30)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pull = commands.add_parser(
        "pull",
        help="pull an image or OCI artifact into the store",
        description="Pull an image or OCI artifact into the store with parallel range requests.",
    )
    pull.add_argument(
        "reference",
        type=parse_reference,
        help="image reference, e.g. localhost:5000/llm:v1 or ubuntu",
    )
    pull.add_argument(
        "--platform",
        type=parse_platform,
        default=None,
        help="os/arch[/variant] to pull from an index (default: this host)",
    )
    pull.add_argument(
        "--tag",
        type=parse_tag,
        default=None,
        help="tag in the store (default: the reference). For an index the tag names the index, "
        "and a pull of another platform under the same tag adds that platform",
    )
    pull.add_argument(
        "--insecure",
        action="store_true",
        help="use plain HTTP for this registry (loopback registries use it unless they answer TLS)",
    )
    pull.add_argument(
        "--ca-cert",
        action="append",
        default=[],
        type=parse_input_file,
        metavar="PEM",
        help="trust this certificate authority too (repeatable)",
    )
    add_common(pull)
    unpack.add_pull_arguments(pull)
    pull.set_defaults(run=run_pull)

    fetch = commands.add_parser(
        "fetch",
        help="download one artifact from an HTTP(S) URL into the store",
        description="Download one blob (a model file, for example) from an HTTP(S) URL, "
        "verified against its digest.",
    )
    fetch.add_argument(
        "url", type=parse_url, help="HTTP(S) URL of the artifact, e.g. a presigned object URL"
    )
    fetch.add_argument(
        "--digest", type=parse_digest, required=True, help="expected digest, sha256:<hex>"
    )
    fetch.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="size of the artifact, in bytes or with a suffix such as 16G (default: from HEAD)",
    )
    add_common(fetch)
    fetch.set_defaults(run=run_fetch)


class ProgressLine:
    """Redraws one status line on a terminal: bytes, rate, ETA and blobs done."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.width = 0

    def __call__(self, progress: PullProgress) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = progress.fetched_bytes / elapsed
        remaining = progress.total_bytes - progress.fetched_bytes - progress.reused_bytes
        eta = f"{remaining / rate:.0f}s" if rate > 0 and remaining > 0 else "-"
        line = (
            f"{format_bytes(progress.fetched_bytes + progress.reused_bytes)}"
            f" / {format_bytes(progress.total_bytes)}"
            f"  {format_bytes(int(rate))}/s  ETA {eta}"
            f"  blobs {progress.blobs_done}/{progress.blobs_total}"
        )
        self.stream.write("\r" + line.ljust(self.width))
        self.width = len(line)
        if progress.finished:
            self.stream.write("\n")
        self.stream.flush()


def progress_display(arguments: argparse.Namespace) -> ProgressLine | None:
    if arguments.json or not sys.stderr.isatty():
        return None
    return ProgressLine(sys.stderr)


def blob_json(blob: BlobReport) -> dict[str, Any]:
    return {
        "digest": blob.digest,
        "size": blob.size,
        "media_type": blob.media_type,
        "fetched_bytes": blob.fetched_bytes,
        "reused": blob.reused,
        "ranged": blob.ranged,
        "requests": blob.requests,
        "seconds": round(blob.seconds, 6),
    }


def rate(count: int, seconds: float) -> str:
    return f"{format_bytes(int(count / seconds))}/s" if seconds > 0 else "-"


def run_pull(arguments: argparse.Namespace) -> int:
    if arguments.flatten and arguments.unpack is None:
        raise UsageError("--flatten applies only with --unpack DIR; add --unpack DIR or drop it")
    store = open_store(arguments)
    reference: str = arguments.reference
    insecure = [reference.split("/", 1)[0]] if arguments.insecure else []
    if arguments.unpack is not None:
        return unpack.run_pull_and_unpack(arguments, store, insecure, progress_display(arguments))

    async def pull() -> PullReport:
        return await store.pull(
            reference,
            platform=arguments.platform,
            connections=arguments.connections,
            chunk_size=arguments.chunk_size,
            tag=arguments.tag,
            insecure_registries=insecure,
            ca_certificates=arguments.ca_cert,
            stall_timeout_s=arguments.stall_timeout,
            progress=progress_display(arguments),
        )

    report = asyncio.run(pull())
    if arguments.json:
        print_json(
            {
                "reference": report.reference,
                "tag": report.tag,
                "manifest_digest": report.manifest_digest,
                "media_type": report.media_type,
                "index_digest": report.index_digest,
                "bytes_fetched": report.bytes_fetched,
                "bytes_reused": report.bytes_reused,
                "seconds": round(report.seconds, 6),
                "blobs": [blob_json(blob) for blob in report.blobs],
            }
        )
        return 0
    print(format_pulled(report))
    print(
        f"fetched {format_bytes(report.bytes_fetched)}, reused {format_bytes(report.bytes_reused)}"
        f" from the store, in {report.seconds:.2f} s"
        f" ({rate(report.bytes_fetched, report.seconds)}), {len(report.blobs)} blobs"
    )
    return 0


def run_fetch(arguments: argparse.Namespace) -> int:
    store = open_store(arguments)

    async def fetch() -> BlobReport:
        return await store.fetch(
            arguments.url,
            digest=arguments.digest,
            size=arguments.size,
            connections=arguments.connections,
            chunk_size=arguments.chunk_size,
            stall_timeout_s=arguments.stall_timeout,
            progress=progress_display(arguments),
        )

    blob = asyncio.run(fetch())
    if arguments.json:
        print_json(blob_json(blob))
        return 0
    verb = "already in the store" if blob.reused else f"fetched in {blob.seconds:.2f} s"
    print(f"{blob.digest}  {format_bytes(blob.size)}  {verb}")
    return 0

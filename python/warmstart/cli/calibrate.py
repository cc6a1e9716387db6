"""``warmstart calibrate``: measure real pulls and write a profile with the fitted numbers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from warmstart.cli.output import print_json, print_table
from warmstart.cli.pull import (
    parse_chunk_size,
    parse_connections,
    parse_count,
    parse_reference,
    writable_directory_error,
)
from warmstart.cli.usage import UsageError, parse_path
from warmstart.replay.calibrate import Calibration, calibrate, profile_toml
from warmstart.replay.profile import DEFAULT_PROFILE, ProfileError, load_profile
from warmstart.store import DEFAULT_CONNECTIONS

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "calibrate",
        help="measure pulls from a registry and write a replay profile",
        description="Pull an image cold with containerd's strategy (one connection per blob, "
        "3 at once) and with the chunked pull to fit the image-stage model, then cold with "
        "half the connections and warm to check it; print measured against modeled seconds "
        "and write a profile.",
    )
    parser.add_argument(
        "reference", type=parse_reference, help="image reference, e.g. 127.0.0.1:5000/llm:v1"
    )
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help=f"base profile for the numbers not measured (default: {DEFAULT_PROFILE})",
    )
    parser.add_argument(
        "--output",
        type=parse_path,
        default=None,
        metavar="FILE",
        help="write the profile TOML here",
    )
    parser.add_argument(
        "--connections",
        type=parse_connections,
        default=DEFAULT_CONNECTIONS,
        metavar="N",
        help=f"chunked pull connections (default: {DEFAULT_CONNECTIONS})",
    )
    parser.add_argument(
        "--chunk-size",
        type=parse_chunk_size,
        default=16 << 20,
        metavar="SIZE",
        help="chunked pull range size, e.g. 16M (default: 16M)",
    )
    parser.add_argument(
        "--repeat",
        type=parse_count,
        default=1,
        metavar="N",
        help="run each of the two fit pulls N times and fit the fastest, for a busy node "
        "(default: 1)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="use plain HTTP for this registry (loopback registries use it unless they answer TLS)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    parser.set_defaults(run=run_calibrate)


def calibration_json(calibration: Calibration) -> dict[str, object]:
    network = calibration.network
    return {
        "reference": calibration.reference,
        "layers": list(calibration.layers),
        "fit_blob_seconds": list(calibration.fit_blob_seconds),
        "warnings": list(calibration.warnings),
        "registry": {
            "connection_bytes_per_s": network.connection_bytes_per_s,
            "first_byte_s": network.first_byte_s,
            "node_bytes_per_s": None
            if network.node_bytes_per_s == float("inf")
            else network.node_bytes_per_s,
            "unpack_bytes_per_s": None
            if network.unpack_bytes_per_s == float("inf")
            else network.unpack_bytes_per_s,
        },
        "runs": [
            {
                "name": m.name,
                "puller": m.puller.value,
                "connections": m.connections,
                "measured_s": m.measured_s,
                "modeled_s": m.modeled_s,
                "error": m.error,
                "bytes_fetched": m.bytes_fetched,
            }
            for m in calibration.measurements
        ],
    }


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Make SIGTERM raise ``KeyboardInterrupt`` like Ctrl-C, so the temporary stores of the
    pulls are removed. Signal handlers can be set only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_calibrate(arguments: argparse.Namespace) -> int:
    try:
        base = load_profile(arguments.profile)
    except ProfileError as error:
        raise UsageError(str(error)) from None
    output = arguments.output
    if output is not None:
        # Checked before the pulls, so a typo in the path does not lose the measurements.
        problem = writable_directory_error(output.parent)
        if problem is None and output.is_dir():
            problem = f"--output {str(output)!r} is a directory; name a file"
        if problem is not None:
            raise UsageError(f"cannot write --output: {problem}")
    measure = calibrate(
        arguments.reference,
        base,
        connections=arguments.connections,
        chunk_size=arguments.chunk_size,
        insecure=arguments.insecure,
        repeat=arguments.repeat,
    )
    with _sigterm_interrupts():
        calibration = asyncio.run(measure)
    if arguments.output is not None:
        arguments.output.write_text(profile_toml(base, calibration, str(arguments.profile)))
    for warning in calibration.warnings:
        print(f"warmstart: warning: {warning}", file=sys.stderr)
    if arguments.json:
        print_json(calibration_json(calibration))
        return 0
    network = calibration.network
    print(
        f"{calibration.reference}: {len(calibration.layers)} blobs, "
        f"{sum(calibration.layers)} bytes; fitted {network.connection_bytes_per_s / 1e6:.2f} MB/s "
        f"per connection, {network.first_byte_s * 1000:.1f} ms to first byte, node cap "
        + (
            "none reached"
            if network.node_bytes_per_s == float("inf")
            else f"{network.node_bytes_per_s / 1e6:.1f} MB/s"
        )
    )
    print_table(
        ("pull", "strategy", "connections", "measured s", "model s", "error"),
        [
            (
                m.name,
                m.puller.value,
                m.connections,
                f"{m.measured_s:.3f}",
                f"{m.modeled_s:.3f}",
                f"{m.error * 100:+.1f}%",
            )
            for m in calibration.measurements
        ],
    )
    if arguments.output is not None:
        print(f"profile written to {arguments.output}")
    return 0

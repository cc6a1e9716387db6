"""Accuracy of the replay image-stage model against real pulls through the throttling proxy.

Usage, from the repository root (the images come from ``python -m benchmarks.images build``)::

    python -m benchmarks.calibrate_bench [--cache /work/bench-images] [--work DIR]
        [--calibrate calibration] [--calibrate-repeat 2] [--repeat 3] [--rate-mb 50]
        [--delay-ms 20] [--only small,medium,large]

All on 127.0.0.1: the real registry (``docker-registry``) serves the benchmark images (``small``,
``medium``, ``large``) and a generated calibration image, behind ``benchmarks/throttle_proxy.py``
(50 MB/s per TCP connection, 20 ms to first byte by default). ``calibrate`` runs once on the
image named by ``--calibrate``, fitting on the fastest of ``--calibrate-repeat`` pulls. The
calibration image is 10 blobs of random bytes from 768 MiB down to 0.75 MiB, halving, so its
pulls have blobs of many sizes and a chunked pull of a few seconds. Then every benchmark image
is pulled cold into a fresh store ``--repeat`` times per strategy. The strategies are
containerd's (3 connections, one per blob), the chunked pull with 16 connections (the default,
which ``calibrate`` fits on) and with 8, both with 16 MiB ranges, and with 4 connections and
32 MiB ranges. The fastest and the
slowest of each are printed next to the model's prediction from the fitted network, for the
blob sizes in the order the layer store started them (largest first). The error is against
the fastest pull, since other work on the machine only ever adds time, as in the fit.

Right before every pull, calibrate's included, ``prime_free_memory`` writes and deletes as many
bytes as the image has. On this VM the first write to memory that the host has taken back costs
about 10 times more (see ``benchmarks/memory_priming.py``), so every pull must start with the
same kind of free memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy
from benchmarks.images import DEFAULT_CACHE, build_images, layout_size
from benchmarks.memory_priming import prime_free_memory
from benchmarks.throttle_proxy import ProxyProcess
from tests.registry.layout import build_image
from tests.registry.real import RealRegistry

from warmstart import LayerStore
from warmstart.replay import Network, load_profile, pull_times
from warmstart.replay.calibrate import Calibration, calibrate
from warmstart.replay.image import Puller

MIB = 1 << 20
TAG = "latest"
BENCHMARK_IMAGES = ("small", "medium", "large")
CALIBRATION_IMAGE = "calibration"
CALIBRATION_LAYER_SIZES = tuple(int(768 * MIB / 2**i) for i in range(10))
# (name, puller, connections, range size in bytes; 0 for whole blobs).
STRATEGIES = (
    ("containerd", Puller.CONTAINERD, 3, 0),
    ("chunked 16x16M", Puller.CHUNKED, 16, 16 * MIB),
    ("chunked 8x16M", Puller.CHUNKED, 8, 16 * MIB),
    ("chunked 4x32M", Puller.CHUNKED, 4, 32 * MIB),
)
# Ranges this large are never split, so every blob is one request on one connection.
WHOLE_BLOB = 1 << 50


@dataclass(frozen=True)
class Row:
    """One image and strategy: the fastest and slowest measured pull and the model."""

    image: str
    strategy: str
    connections: int
    measured_s: float
    slowest_s: float
    modeled_s: float

    @property
    def error(self) -> float:
        return (self.modeled_s - self.measured_s) / self.measured_s


def push_calibration_image(registry: RealRegistry) -> None:
    """Push the generated calibration image (seeded random bytes) as bench/calibration."""
    generator = numpy.random.default_rng(20261204)
    layers = [generator.bytes(size) for size in CALIBRATION_LAYER_SIZES]
    registry.push(f"bench/{CALIBRATION_IMAGE}", TAG, build_image(layers, compress=False))


def pull_cold(
    reference: str, store_root: Path, connections: int, chunk_size: int, size: int
) -> tuple[float, list[int]]:
    """Pull into a fresh store; return the pull's seconds and blob sizes in report order.

    ``size`` is the image's bytes, primed as free memory right before the pull.
    """
    shutil.rmtree(store_root, ignore_errors=True)
    store = LayerStore(store_root)

    async def pull() -> tuple[float, list[int]]:
        report = await store.pull(
            reference,
            connections=connections,
            chunk_size=chunk_size,
            insecure_registries=[reference.split("/", 1)[0]],
        )
        return report.seconds, [blob.size for blob in report.blobs]

    prime_free_memory(store_root.parent, size)
    try:
        return asyncio.run(pull())
    finally:
        shutil.rmtree(store_root, ignore_errors=True)


def modeled_seconds(
    layers: list[int], network: Network, puller: Puller, connections: int, chunk_size: int
) -> float:
    download = replace(network, unpack_bytes_per_s=float("inf"))
    return pull_times(
        layers,
        download,
        puller,
        connections=connections,
        chunk_size=chunk_size or WHOLE_BLOB,
    ).download_s


HEADER = (
    f"{'image':8} {'strategy':14} {'fastest s':>9} {'slowest s':>9} {'model s':>8} {'error':>7}"
)


def format_row(row: Row) -> str:
    return (
        f"{row.image:8} {row.strategy:14} {row.measured_s:9.3f} {row.slowest_s:9.3f} "
        f"{row.modeled_s:8.3f} {row.error * 100:+6.1f}%"
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--work",
        type=Path,
        help="directory for the registry and the stores, removed after (default: a new "
        "temporary directory)",
    )
    parser.add_argument(
        "--calibrate",
        default=CALIBRATION_IMAGE,
        choices=(CALIBRATION_IMAGE, *BENCHMARK_IMAGES),
        help="image to run calibrate on (default: the generated calibration image)",
    )
    parser.add_argument("--only", default=",".join(BENCHMARK_IMAGES), help="images to check")
    parser.add_argument(
        "--calibrate-repeat", type=int, default=2, help="calibrate's pulls per fit pull"
    )
    parser.add_argument("--repeat", type=int, default=3, help="pulls per image and strategy")
    parser.add_argument("--rate-mb", type=float, default=50.0, help="per-connection cap, MB/s")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="time to first byte, ms")
    return parser.parse_args()


def run_calibrate(reference: str, work: Path, repeat: int, size: int) -> Calibration:
    """Run ``calibrate`` on ``reference`` (``size`` bytes) and print the fitted network and
    its pulls."""
    started = time.perf_counter()
    calibration = asyncio.run(
        calibrate(
            reference,
            load_profile(),
            insecure=True,
            work_dir=work,
            repeat=repeat,
            before_pull=lambda: prime_free_memory(work, size),
        )
    )
    network = calibration.network
    print(
        f"calibrated on {reference} in {time.perf_counter() - started:.1f} s: "
        f"{network.connection_bytes_per_s / 1e6:.2f} MB/s per connection, "
        f"{network.first_byte_s * 1000:.1f} ms to first byte, node cap "
        f"{network.node_bytes_per_s / 1e6:.0f} MB/s",
        flush=True,
    )
    blobs = zip(calibration.layers, calibration.fit_blob_seconds, strict=True)
    print(
        "  containerd fit pull, bytes: seconds of each blob: "
        + ", ".join(f"{size}: {seconds:.3f}" for size, seconds in blobs),
        flush=True,
    )
    for m in calibration.measurements:
        print(
            f"  {m.name:5} {m.puller.value:10} {m.connections} connections: "
            f"{m.measured_s:.3f} s measured, {m.modeled_s:.3f} s modeled, "
            f"{m.error * 100:+.1f}%",
            flush=True,
        )
    return calibration


def check_image(
    name: str, host: str, network: Network, work: Path, repeat: int, size: int
) -> list[Row]:
    """Pull one image (``size`` bytes) cold ``repeat`` times per strategy and compare with
    the model."""
    reference = f"{host}/bench/{name}:{TAG}"
    rows = []
    for strategy, puller, connections, chunk_size in STRATEGIES:
        pulls = [
            pull_cold(reference, work / "store", connections, chunk_size or WHOLE_BLOB, size)
            for _ in range(repeat)
        ]
        times = [seconds for seconds, _ in pulls]
        layers = pulls[0][1]
        modeled = modeled_seconds(layers, network, puller, connections, chunk_size)
        row = Row(name, strategy, connections, min(times), max(times), modeled)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def results_json(calibration: Calibration, rows: list[Row]) -> dict[str, object]:
    network = calibration.network
    return {
        "network": {
            "connection_bytes_per_s": network.connection_bytes_per_s,
            "first_byte_s": network.first_byte_s,
            "node_bytes_per_s": network.node_bytes_per_s,
        },
        "fit_blob_seconds": list(calibration.fit_blob_seconds),
        "calibration": [
            {
                "name": m.name,
                "puller": m.puller.value,
                "connections": m.connections,
                "measured_s": m.measured_s,
                "modeled_s": m.modeled_s,
            }
            for m in calibration.measurements
        ],
        "pulls": [
            {
                "image": row.image,
                "strategy": row.strategy,
                "fastest_s": row.measured_s,
                "slowest_s": row.slowest_s,
                "modeled_s": row.modeled_s,
                "error": row.error,
            }
            for row in rows
        ],
        "max_abs_error": max(abs(row.error) for row in rows),
    }


def main() -> None:
    arguments = parse_arguments()
    names = arguments.only.split(",")
    benchmark_names = sorted({*names, arguments.calibrate} - {CALIBRATION_IMAGE})
    layouts = build_images(benchmark_names, arguments.cache)
    sizes = {name: layout_size(layout) for name, layout in layouts.items()}
    sizes[CALIBRATION_IMAGE] = sum(CALIBRATION_LAYER_SIZES)
    if arguments.work is not None:
        arguments.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="warmstart-calibrate-bench-", dir=arguments.work))
    registry = RealRegistry.start(work / "registry")
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join(["python -m benchmarks.calibrate_bench", *sys.argv[1:]]),
        "load_average_start": os.getloadavg(),
    }
    try:
        for name in benchmark_names:
            registry.push_layout(layouts[name], TAG, f"bench/{name}", TAG)
        if arguments.calibrate == CALIBRATION_IMAGE:
            push_calibration_image(registry)
        # In a process of its own, so that its threads share no interpreter with the pulls.
        with ProxyProcess(registry.host, arguments.rate_mb, arguments.delay_ms) as proxy:
            reference = f"{proxy.host}/bench/{arguments.calibrate}:{TAG}"
            calibration = run_calibrate(
                reference, work, arguments.calibrate_repeat, sizes[arguments.calibrate]
            )

            print(HEADER, flush=True)
            rows = []
            for name in names:
                rows += check_image(
                    name, proxy.host, calibration.network, work, arguments.repeat, sizes[name]
                )
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)

    results["load_average_end"] = os.getloadavg()
    results.update(results_json(calibration, rows))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

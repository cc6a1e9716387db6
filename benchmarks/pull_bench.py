"""Pull benchmarks: warmstart against skopeo and curl in one run, direct and throttled.

Usage, from the repository root (the images come from ``python -m benchmarks.images build``)::

    python -m benchmarks.pull_bench [--cache /work/bench-images] [--only large,medium] [--repeat 3]

For each image the same blobs are fetched by:
- ``warmstart pull`` into a fresh store (its default connections, 16 MiB ranges, hashing and
  fsync);
- ``skopeo copy docker://... oci:DIR`` (its defaults: one connection per layer);
- containerd's ``ctr content fetch`` into a fresh containerd (its defaults: one connection
  per layer);
- ``curl``, written to files without hashing: the transport's ceiling on this machine. Directly,
  8 parallel range requests of equal size per blob; through the throttle, as many parallel 16 MiB
  range requests as warmstart has connections.
``curl`` runs twice: once as is, and once followed by ``sync``, because warmstart's time includes
making every blob durable (fsync before commit) and the peers' does not. Each runs directly
against the real registry on loopback, and through a proxy that caps each TCP connection at
50 MB/s with 20 ms to the first byte. Every tool runs ``--repeat`` times in rotating order and
the median is reported; each run starts after ``prime_free_memory`` (see
``benchmarks/memory_priming.py``: on this VM, writing into memory the host has taken back costs
seconds, and it must not fall on whichever tool runs first). ``--pause-page-reporting`` (needs
root) stops that reporting for the whole run instead. It also times a warm pull (every blob
present) of the 20-layer image and reads the peak memory of a large pull.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from benchmarks.containerd import Containerd
from benchmarks.images import DEFAULT_CACHE, build_images
from benchmarks.memory_priming import (
    page_reporting_paused,
    page_reporting_state,
    prime_free_memory,
)
from benchmarks.throttle_proxy import ProxyProcess
from tests.registry.real import RealRegistry

from warmstart import LayerStore
from warmstart.store import DEFAULT_CONNECTIONS

MIB = 1 << 20
TAG = "latest"


def manifest_blobs(layout: Path) -> list[tuple[str, int]]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    blobs = [manifest["config"], *manifest["layers"]]
    return [(blob["digest"], blob["size"]) for blob in blobs]


def time_warmstart(reference: str, work: Path, size: int) -> float:
    store_root = work / "warmstart-store"
    shutil.rmtree(store_root, ignore_errors=True)
    store = LayerStore(store_root)

    async def pull() -> None:
        await store.pull(reference, connections=DEFAULT_CONNECTIONS, chunk_size=16 * MIB)

    prime_free_memory(work, size)
    started = time.perf_counter()
    asyncio.run(pull())
    elapsed = time.perf_counter() - started
    shutil.rmtree(store_root)
    return elapsed


def time_skopeo(reference: str, work: Path, size: int) -> float:
    target = work / "skopeo-layout"
    shutil.rmtree(target, ignore_errors=True)
    prime_free_memory(work, size)
    started = time.perf_counter()
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{reference}",
            f"oci:{target}:x",
        ],
        check=True,
    )
    elapsed = time.perf_counter() - started
    shutil.rmtree(target)
    return elapsed


def time_ctr(reference: str, work: Path, size: int) -> float:
    """Time ``ctr content fetch`` of the image into a fresh containerd's content store."""
    with Containerd.start(work / "containerd") as daemon:
        prime_free_memory(work, size)
        started = time.perf_counter()
        daemon.ctr("content", "fetch", "--plain-http", reference)
        return time.perf_counter() - started


def time_curl(
    host: str,
    repository: str,
    blobs: list[tuple[str, int]],
    work: Path,
    parallel: int,
    range_size: int | None,
    keep: bool = False,
) -> float:
    """Fetch every blob with `parallel` concurrent range requests into files, no hashing."""
    target = work / "curl"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    prime_free_memory(work, sum(size for _, size in blobs))
    started = time.perf_counter()
    for digest, size in blobs:
        piece = range_size or max(1, -(-size // parallel))
        ranges = [(start, min(start + piece, size) - 1) for start in range(0, size, piece)]
        url = f"http://{host}/v2/{repository}/blobs/{digest}"
        for batch_start in range(0, len(ranges), parallel):
            batch = ranges[batch_start : batch_start + parallel]
            processes = [
                subprocess.Popen(
                    [
                        "curl",
                        "-sf",
                        "-r",
                        f"{first}-{last}",
                        "-o",
                        str(target / f"{digest[7:19]}-{first}"),
                        url,
                    ]
                )
                for first, last in batch
            ]
            for process in processes:
                if process.wait() != 0:
                    raise RuntimeError(f"curl failed for {url}")
    elapsed = time.perf_counter() - started
    if not keep:
        shutil.rmtree(target)
    return elapsed


def tool_runs(
    host: str,
    repository: str,
    blobs: list[tuple[str, int]],
    work: Path,
    curl_parallel: int,
    range_size: int | None,
) -> dict[str, Callable[[], float]]:
    """Return the timed run of each tool for one image and route."""
    reference = f"{host}/{repository}:{TAG}"
    total = sum(size for _, size in blobs)
    return {
        "warmstart": lambda: time_warmstart(reference, work, total),
        "skopeo": lambda: time_skopeo(reference, work, total),
        "ctr": lambda: time_ctr(reference, work, total),
        "curl": lambda: time_curl(host, repository, blobs, work, curl_parallel, range_size),
        # warmstart's time includes making the blobs durable; the peers' does not.
        "curl_then_sync": lambda: (
            time_curl(host, repository, blobs, work, curl_parallel, range_size, keep=True)
            + time_sync()
        ),
    }


def rotated_medians(runs: dict[str, Callable[[], float]], repeat: int) -> dict[str, float]:
    """Run every tool ``repeat`` times, each round starting one tool later, and return medians.

    Rotating the order keeps any effect of running first or after another tool (page cache,
    memory the host has just backed) from always landing on the same tool.
    """
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeat):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(runs[name]())
    return {name: statistics.median(values) for name, values in samples.items()}


def time_sync() -> float:
    """Return the seconds `sync` takes: what a peer that skipped fsync still owed the disk."""
    started = time.perf_counter()
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - started


def warm_pull_seconds(reference: str, work: Path, repeat: int = 5) -> float:
    store = LayerStore(work / "warm-store")

    async def pull() -> None:
        await store.pull(reference)

    asyncio.run(pull())
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        asyncio.run(pull())
        times.append(time.perf_counter() - started)
    shutil.rmtree(work / "warm-store")
    return min(times)


def peak_memory_mib(reference: str, work: Path) -> float:
    """Pull in a fresh process and return its peak resident memory (VmHWM) in MiB."""
    store_root = work / "memory-store"
    shutil.rmtree(store_root, ignore_errors=True)
    code = (
        "import asyncio, sys\n"
        "from warmstart import LayerStore\n"
        "store = LayerStore(sys.argv[1])\n"
        "async def main():\n"
        "    await store.pull(sys.argv[2])\n"
        "asyncio.run(main())\n"
        "print(int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code, str(store_root), reference],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shutil.rmtree(store_root)
    return int(output.split()[-1]) / MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--only", default="large,medium")
    parser.add_argument("--rate-mb", type=float, default=50.0, help="per-connection cap, MB/s")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="time to first byte, ms")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each tool; the median is reported"
    )
    parser.add_argument(
        "--pause-page-reporting",
        action="store_true",
        help="stop the kernel's free page reporting during the run (needs root; see "
        "benchmarks/memory_priming.py)",
    )
    arguments = parser.parse_args()
    names = arguments.only.split(",")
    layouts = build_images([*names, "small"], arguments.cache)
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join(["python -m benchmarks.pull_bench", *sys.argv[1:]]),
    }
    pausing: AbstractContextManager[None] = (
        page_reporting_paused() if arguments.pause_page_reporting else nullcontext()
    )
    with pausing:
        results["free page reporting"] = page_reporting_state()
        print(results, flush=True)
        measure_all(arguments, names, layouts, results)
    print(json.dumps(results, indent=2))


def measure_all(
    arguments: argparse.Namespace,
    names: list[str],
    layouts: dict[str, Path],
    results: dict[str, object],
) -> None:
    """Serves the images and measures every tool on every image and route into `results`."""
    work = Path(tempfile.mkdtemp(prefix="warmstart-pull-bench-"))
    registry = RealRegistry.start(work / "registry")
    try:
        for name in [*names, "small"]:
            registry.push_layout(layouts[name], TAG, f"bench/{name}", TAG)
        # In a process of its own, so that its threads share no interpreter with warmstart's
        # pull, which runs in this one.
        proxy = ProxyProcess(registry.host, arguments.rate_mb, arguments.delay_ms)
        try:
            for name in names:
                blobs = manifest_blobs(layouts[name])
                total = sum(size for _, size in blobs)
                figures: dict[str, float] = {"bytes": total}
                for route, host, curl_parallel, range_size in [
                    ("direct", registry.host, 8, None),
                    ("throttled", proxy.host, DEFAULT_CONNECTIONS, 16 * MIB),
                ]:
                    runs = tool_runs(host, f"bench/{name}", blobs, work, curl_parallel, range_size)
                    seconds = rotated_medians(runs, arguments.repeat)
                    shutil.rmtree(work / "curl", ignore_errors=True)
                    for tool, value in seconds.items():
                        figures[f"{route}_{tool}_s"] = value
                    print(name, route, {k: round(v, 2) for k, v in figures.items()}, flush=True)
                results[name] = figures
            results["warm_pull_small_s"] = warm_pull_seconds(
                f"{registry.host}/bench/small:{TAG}", work
            )
            if "large" in names:
                results["large_pull_peak_rss_mib"] = peak_memory_mib(
                    f"{registry.host}/bench/large:{TAG}", work
                )
        finally:
            proxy.stop()
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

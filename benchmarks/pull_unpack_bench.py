"""Pull with overlapped unpack against pull then unpack, on the benchmark images.

Usage, from the repository root (images from ``python -m benchmarks.images build``)::

    python -m benchmarks.pull_unpack_bench [--cache /work/bench-images] [--only large,medium]
        [--repeat 3] [--work DIR]

A ``docker-registry`` on 127.0.0.1 serves the images, directly and through
``benchmarks/throttle_proxy.py`` (50 MB/s per TCP connection, 20 ms to first byte), which runs
as its own process so its CPU time is counted apart. For each image and route, each repetition
measures, every run into an empty store and an empty target after ``sync``:

- ``pull``: ``LayerStore.pull`` alone (its defaults: 16 connections, 16 MiB ranges);
- ``unpack``: ``LayerStore.unpack`` (overlay layout, or one root filesystem with
  ``--flatten``) of the image the pull left in the store;
- ``pull then unpack``: the two one after the other;
- ``pull --unpack``: ``LayerStore.pull_and_unpack``, extraction overlapped with the download
  (with ``--flatten``, the layers applied in order to one root filesystem as they arrive).

With ``--keep``, stores and targets are deleted only at the end. On ext4 without a journal,
creating inodes right after many were deleted is slow: the allocator skips inodes deleted in the
last minutes (``recently_deleted`` in ``fs/ext4/ialloc.c``), so each run would pay for the
deletion of the previous one. ``--keep`` needs disk space for every run's store and target.
With ``--fs-size GIB`` (needs root), each repetition of an image and route runs on a fresh ext4
(with a journal) of that size in a file under ``--work``, mounted through a loop device with
direct I/O, as in ``benchmarks/unpack_bench.py``. With ``--keep`` too, no step creates files
where another deleted them. ``large`` needs about 24 GiB.

Each measured run holds the shared CPU lock ``/tmp/warmstart-cpu.lock`` and starts after
``prime_free_memory`` (see ``benchmarks/memory_priming.py``) of three times the image's
compressed size. On a VM whose balloon device reports free pages to the host, that priming
covers only the first seconds of a run, because pages primed but not yet used are reported
again soon after. ``--pause-page-reporting`` (needs root) stops the reporting for the whole run
and backs every free page first. Each step then writes into memory as on a machine without
reporting. The header says whether reporting was on.

Each line shows the wall time, the CPU time of this process (warmstart's threads), of the
registry and of the proxy, and the load average. The summary gives medians and the overlapped
time against max(pull, unpack) and against pull + unpack.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from benchmarks.images import DEFAULT_CACHE, build_images
from benchmarks.memory_priming import (
    page_reporting_paused,
    page_reporting_state,
    prime_free_memory,
)
from benchmarks.throttle_proxy import ProxyProcess
from benchmarks.unpack_bench import loop_filesystem
from tests.registry.real import RealRegistry

from warmstart import LayerStore

MIB = 1 << 20
TAG = "latest"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STEPS = ("pull", "unpack", "pull then unpack", "pull --unpack")
CPU_LOCK = Path("/tmp/warmstart-cpu.lock")
# Bytes of free memory primed before each run, per byte of compressed image: about the size
# of the uncompressed layers a run writes.
PRIMING_FACTOR = 3


@dataclass
class Sample:
    """One measured run: wall seconds and CPU seconds of each process involved."""

    seconds: float
    cpu_self: float
    # The kernel's share of `cpu_self`: file creation, writes and syncfs.
    cpu_self_system: float
    cpu_registry: float
    cpu_proxy: float
    load: str
    # For `pull --unpack`: the pull's own seconds inside the overlapped run.
    pull_seconds: float | None = None


def process_cpu(pid: int | None) -> float:
    """Return user plus system CPU seconds of `pid` (0 for None)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def self_cpu() -> tuple[float, float]:
    """Return user plus system, and system, CPU seconds of this process."""
    times = os.times()
    return times.user + times.system, times.system


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


class Runner:
    """Runs each step into fresh directories and measures it.

    The directories are under `directory`: `work` unless a loop file system replaces it.
    """

    def __init__(
        self,
        work: Path,
        registry_pid: int,
        proxy_pid: int | None,
        compressed_bytes: int,
        keep: bool = False,
        flatten: bool = False,
    ) -> None:
        self.work = work
        self.flatten = flatten
        self.compressed_bytes = compressed_bytes
        self.registry_pid = registry_pid
        self.proxy_pid = proxy_pid
        self.keep = keep
        self.directory = work

    @property
    def store_root(self) -> Path:
        return self.directory / "store"

    @property
    def target(self) -> Path:
        return self.directory / "target"

    def clean(self) -> None:
        """Empty the store and target paths, moving the old ones aside with `keep`."""
        for path in (self.store_root, self.target):
            if self.keep and path.exists():
                kept = self.directory / "kept"
                kept.mkdir(exist_ok=True)
                path.rename(kept / f"{path.name}-{len(list(kept.iterdir()))}")
            shutil.rmtree(path, ignore_errors=True)

    def measure(self, work: Callable[[], float | None]) -> Sample:
        with CPU_LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            prime_free_memory(self.work, PRIMING_FACTOR * self.compressed_bytes)
            cpu = (self_cpu(), process_cpu(self.registry_pid), process_cpu(self.proxy_pid))
            started = time.perf_counter()
            inner = work()
            seconds = time.perf_counter() - started
            total, system = self_cpu()
        return Sample(
            seconds=seconds,
            cpu_self=total - cpu[0][0],
            cpu_self_system=system - cpu[0][1],
            cpu_registry=process_cpu(self.registry_pid) - cpu[1],
            cpu_proxy=process_cpu(self.proxy_pid) - cpu[2],
            load=load_average(),
            pull_seconds=inner,
        )

    def repetition(self, reference: str) -> dict[str, Sample]:
        samples: dict[str, Sample] = {}
        self.clean()
        store = LayerStore(self.store_root)
        manifest: list[str] = []

        def pull_only() -> None:
            manifest.append(asyncio.run(store.pull(reference)).manifest_digest)

        def unpack_only() -> None:
            store.unpack(manifest[0], self.target, flatten=self.flatten)

        samples["pull"] = self.measure(pull_only)
        samples["unpack"] = self.measure(unpack_only)

        self.clean()
        store = LayerStore(self.store_root)

        def pull_then_unpack() -> None:
            pulled = asyncio.run(store.pull(reference))
            store.unpack(pulled.manifest_digest, self.target, flatten=self.flatten)

        samples["pull then unpack"] = self.measure(pull_then_unpack)

        self.clean()
        store = LayerStore(self.store_root)

        def overlapped() -> float:
            pulled, _ = asyncio.run(
                store.pull_and_unpack(reference, self.target, flatten=self.flatten)
            )
            return float(pulled.seconds)

        samples["pull --unpack"] = self.measure(overlapped)
        self.clean()
        return samples


def print_sample(image: str, route: str, step: str, sample: Sample) -> None:
    inner = "" if sample.pull_seconds is None else f"  (pull inside: {sample.pull_seconds:.2f} s)"
    print(
        f"{image:7} {route:9} {step:17} {sample.seconds:7.2f} s  cpu: warmstart "
        f"{sample.cpu_self:6.2f} s ({sample.cpu_self_system:5.2f} s system), registry "
        f"{sample.cpu_registry:5.2f} s, proxy "
        f"{sample.cpu_proxy:5.2f} s  load {sample.load}{inner}",
        flush=True,
    )


def summarize(samples: list[dict[str, Sample]]) -> dict[str, float]:
    summary = {step: statistics.median(s[step].seconds for s in samples) for step in STEPS}
    for step in STEPS:
        cpu = statistics.median(
            s[step].cpu_self + s[step].cpu_registry + s[step].cpu_proxy for s in samples
        )
        summary[f"{step} cpu"] = cpu
    # With every core busy, no schedule finishes sooner than the CPU time over the cores.
    summary["pull --unpack cpu / cores"] = summary["pull --unpack cpu"] / (os.cpu_count() or 1)
    inner = [s["pull --unpack"].pull_seconds for s in samples]
    summary["pull inside pull --unpack"] = statistics.median(x for x in inner if x is not None)
    longer = max(summary["pull"], summary["unpack"])
    summary["overlapped / max(pull, unpack)"] = summary["pull --unpack"] / longer
    summary["overlapped / (pull + unpack)"] = summary["pull --unpack"] / (
        summary["pull"] + summary["unpack"]
    )
    return summary


def compressed_size(layout: Path) -> int:
    """Return the total size of the layer blobs of the layout's only manifest."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    return sum(layer["size"] for layer in manifest["layers"])


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="OCI layout directory")
    parser.add_argument("--only", default="large,medium", help="comma-separated image names")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of every step")
    parser.add_argument("--routes", default="direct,throttled", help="direct, throttled or both")
    parser.add_argument("--rate-mb", type=float, default=50.0, help="per-connection cap, MB/s")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="time to first byte, ms")
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch directory (default: a new one in /tmp)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="delete stores and targets only at the end; see the module docstring",
    )
    parser.add_argument(
        "--fs-size",
        type=int,
        default=0,
        metavar="GIB",
        help="run each repetition on a fresh loop-mounted ext4 of this many GiB (needs root; "
        "default: 0, run in --work)",
    )
    parser.add_argument(
        "--flatten",
        action="store_true",
        help="unpack into one merged root filesystem instead of the overlay layout",
    )
    parser.add_argument(
        "--pause-page-reporting",
        action="store_true",
        help="stop the kernel's free page reporting during the run (needs root; see "
        "benchmarks/memory_priming.py)",
    )
    return parser.parse_args()


def measure_route(
    name: str, route: str, host: str, runner: Runner, repeat: int, fs_size: int
) -> dict[str, float]:
    samples = []
    reference = f"{host}/bench/{name}:{TAG}"
    for _ in range(repeat):
        if fs_size > 0:
            with loop_filesystem(runner.work / "ext4.img", runner.work / "fs", fs_size) as fs:
                runner.directory = fs
                repetition = runner.repetition(reference)
        else:
            repetition = runner.repetition(reference)
        for step, sample in repetition.items():
            print_sample(name, route, step, sample)
        samples.append(repetition)
    summary = summarize(samples)
    print(name, route, {key: round(value, 2) for key, value in summary.items()}, flush=True)
    return summary


def main() -> None:
    arguments = parse_arguments()
    names = arguments.only.split(",")
    layouts = build_images(names, arguments.cache)
    if arguments.work is not None:
        arguments.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="warmstart-pull-unpack-", dir=arguments.work))
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join(["python -m benchmarks.pull_unpack_bench", *sys.argv[1:]]),
        "load_at_start": load_average(),
        "file system": f"fresh {arguments.fs_size} GiB ext4 on a loop device per repetition"
        if arguments.fs_size > 0
        else str(work),
    }
    pausing: AbstractContextManager[None] = (
        page_reporting_paused() if arguments.pause_page_reporting else nullcontext()
    )
    with pausing:
        results["free page reporting"] = page_reporting_state()
        print(results, flush=True)
        measure_all(arguments, names, layouts, work, results)
    results["load_at_end"] = load_average()
    print(json.dumps(results, indent=2))


def measure_all(
    arguments: argparse.Namespace,
    names: list[str],
    layouts: dict[str, Path],
    work: Path,
    results: dict[str, object],
) -> None:
    """Serves the images and measures every image and route into `results`."""
    routes = arguments.routes.split(",")
    registry = RealRegistry.start(work / "registry")
    proxy: ProxyProcess | None = None
    try:
        for name in names:
            registry.push_layout(layouts[name], TAG, f"bench/{name}", TAG)
        proxy = ProxyProcess(registry.host, arguments.rate_mb, arguments.delay_ms)
        for name in names:
            for route in routes:
                direct = route == "direct"
                host = registry.host if direct else proxy.host
                proxy_pid = None if direct else proxy.process.pid
                runner = Runner(
                    work,
                    registry.process.pid,
                    proxy_pid,
                    compressed_size(layouts[name]),
                    arguments.keep,
                    arguments.flatten,
                )
                results[f"{name} {route}"] = measure_route(
                    name, route, host, runner, arguments.repeat, arguments.fs_size
                )
    finally:
        if proxy is not None:
            proxy.stop()
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Unpack benchmark: warmstart against containerd and ``tar -xzf``, in one run.

Usage, from the repository root (the images come from ``python -m benchmarks.images build``)::

    python -m benchmarks.unpack_bench [--only large,medium] [--repeat 3] [--work DIR]

The images are pushed to a ``docker-registry`` started on 127.0.0.1. For each image, every
repetition times these, in an order that starts one tool later each repetition, each into
empty directories on one file system (see below):

- containerd's unpack, as ``ctr image pull`` time minus ``ctr content fetch`` time. Each
  ``ctr`` command gets a containerd of its own (``benchmarks/containerd.py``) with an empty
  root on that file system, so both start from an empty content store. The snapshotter is
  overlayfs, or native when the overlayfs plugin does not load (the output says which).
- ``tar -xzf`` of each layer blob of the OCI layout, one after another, into one directory.
- ``warmstart unpack`` (the CLI) of the image already in a warmstart store, once in the overlay
  layout and once with ``--flatten``. The store is filled once by ``warmstart pull`` from the
  same registry, which is not timed.

The outputs, containerd's root and the warmstart store are on a fresh ext4 file system (with
a journal, mkfs defaults) in a ``--fs-size`` GiB file under ``--work``, mounted through a loop
device with direct I/O, which the script creates and removes (this needs root; ``--fs-size 0``
uses ``--work`` as it is). The reason: on ext4 without a journal, every inode allocation looks
up the inode table block to skip inodes freed less than 60 s ago (300 s more while the block is
dirty; ``recently_deleted()`` in ``fs/ext4/ialloc.c``), so a run right after the previous
run's output was deleted would pay for that deletion.

Before every timed command the previous output is removed, ``sync`` runs, the script waits
``--settle`` seconds, and ``prime_free_memory`` writes and deletes a scratch file of three
times the image's compressed size in ``--work`` (see ``benchmarks/memory_priming.py``). Each
timed command holds the shared CPU lock ``/tmp/warmstart-cpu.lock``, released in between.

Prints one line per measurement (wall time, CPU time of the tool's processes, load average),
then the medians and the ratios to warmstart's overlay layout, and for warmstart the time of
its largest layer. Then, outside the comparison, the time ``gzip -dc`` (and ``pigz -dc`` when
installed) takes to decompress the largest layer blob to ``/dev/null``, one thread's inflate
rate for comparison with warmstart's largest layer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.containerd import Containerd
from benchmarks.images import DEFAULT_CACHE, build_images, push_images
from benchmarks.memory_priming import prime_free_memory
from tests.registry.real import RealRegistry

from warmstart import LayerStore

TAG = "latest"
CPU_LOCK = Path("/tmp/warmstart-cpu.lock")
DEFAULT_FS_SIZE_GIB = 16
# Bytes of free memory primed before each timed run, per byte of compressed image: about the
# size of the uncompressed layers a run writes.
PRIMING_FACTOR = 3
SNAPSHOTTER_PLUGIN = "io.containerd.snapshotter.v1"

CONTAINERD_UNPACK = "containerd unpack (pull - fetch)"
TAR = "tar -xzf, one layer after another"
OVERLAY = "warmstart unpack (overlay layout)"
FLATTEN = "warmstart unpack --flatten"


@dataclass(frozen=True)
class Image:
    name: str
    layout: Path
    reference: str
    layers: list[Path]
    compressed_bytes: int


def layer_blobs(layout: Path) -> list[Path]:
    """Return the layer blob files of the layout's only manifest, bottom layer first."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / digest.split(":")[1]).read_text())
    return [blobs / layer["digest"].split(":")[1] for layer in manifest["layers"]]


@contextlib.contextmanager
def cpu_lock() -> Iterator[None]:
    """Hold the machine's shared lock for heavy work (an exclusive flock)."""
    with CPU_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


class Bench:
    def __init__(self, work: Path, scratch: Path, settle_s: float, snapshotter: str) -> None:
        self.work = work
        # Where prime_free_memory writes: outside the loop file system, which has no room for it.
        self.scratch = scratch
        self.settle_s = settle_s
        self.snapshotter = snapshotter
        self.output = work / "out"
        self.results: dict[tuple[str, str], list[float]] = defaultdict(list)
        # For warmstart runs: (seconds, uncompressed bytes) of the largest layer, per run.
        self.largest_layer: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)

    def prepare(self, *paths: Path) -> None:
        """Remove earlier output, flush the file system, and wait out ext4's inode reuse delay."""
        for path in (self.output, *paths):
            shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["sync"], check=True)
        time.sleep(self.settle_s)

    def timed(
        self,
        image: Image,
        label: str,
        run: Callable[[], object],
        cpu: Callable[[], float] | None = None,
    ) -> tuple[float, object]:
        """Prime free memory, then time ``run`` under the CPU lock.

        Returns the wall time in seconds and what ``run`` returned. The CPU time printed is
        that of the child processes that ended during ``run``, or ``cpu()``'s increase.
        """
        with cpu_lock():
            prime_free_memory(self.scratch, PRIMING_FACTOR * image.compressed_bytes)
            load = load_average()
            cpu_before = cpu() if cpu else children_cpu()
            started = time.perf_counter()
            result = run()
            seconds = time.perf_counter() - started
            cpu_seconds = (cpu() if cpu else children_cpu()) - cpu_before
        print(
            f"{image.name:7} {seconds:8.2f} s  cpu {cpu_seconds:7.2f} s  load {load}  {label}",
            flush=True,
        )
        return seconds, result

    def record(self, image: str, label: str, seconds: float) -> None:
        self.results[(image, label)].append(seconds)


def children_cpu() -> float:
    """Return user plus system CPU seconds of this process's ended children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_command(command: Sequence[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def run_containerd(bench: Bench, image: Image, host: str) -> None:
    reference = f"{host}/bench/{image.name}:{TAG}"
    directory = bench.work / "containerd"
    times = {}
    commands = {
        "ctr content fetch": ["content", "fetch", "--plain-http", reference],
        f"ctr image pull ({bench.snapshotter} snapshotter)": [
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            bench.snapshotter,
            reference,
        ],
    }
    for label, arguments in commands.items():
        bench.prepare(directory)
        with Containerd.start(directory) as daemon:
            times[label], _ = bench.timed(
                image,
                f"{label}, cpu of containerd",
                functools.partial(daemon.ctr, *arguments),
                cpu=daemon.cpu_seconds,
            )
    fetch, pull = times.values()
    bench.record(image.name, "ctr content fetch", fetch)
    bench.record(image.name, "ctr image pull", pull)
    bench.record(image.name, CONTAINERD_UNPACK, pull - fetch)
    print(f"{image.name:7} {pull - fetch:8.2f} s  {CONTAINERD_UNPACK}", flush=True)


def run_tar(bench: Bench, image: Image) -> None:
    bench.prepare()
    bench.output.mkdir(parents=True)
    script = " && ".join(f"tar -C {bench.output} -xzf {blob}" for blob in image.layers)
    seconds, _ = bench.timed(image, TAR, lambda: run_command(["sh", "-c", script]))
    bench.record(image.name, TAR, seconds)


def run_warmstart(bench: Bench, image: Image, store: Path, flatten: bool) -> None:
    bench.prepare()
    label = FLATTEN if flatten else OVERLAY
    command = [
        sys.executable,
        "-m",
        "warmstart",
        "unpack",
        image.reference,
        "--to",
        str(bench.output),
        "--store",
        str(store),
        "--json",
    ]
    if flatten:
        command.append("--flatten")
    seconds, output = bench.timed(image, label, lambda: run_command(command))
    bench.record(image.name, label, seconds)
    layers = json.loads(str(output))["layers"]
    largest = max(layers, key=lambda layer: layer["compressed_bytes"])
    bench.largest_layer[(image.name, label)].append(
        (largest["seconds"], largest["uncompressed_bytes"])
    )


@contextlib.contextmanager
def loop_filesystem(image: Path, mount_point: Path, size_gib: int) -> Iterator[Path]:
    """Create an ext4 file system in ``image``, mount it at ``mount_point`` through a loop
    device with direct I/O (so pages are not cached twice), and remove it all on exit."""
    with image.open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, size_gib << 30)
    # nodiscard: discarding would punch the preallocated blocks out of the file again.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(image)], check=True)
    device = subprocess.run(
        ["losetup", "--find", "--show", "--direct-io=on", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        mount_point.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", device, str(mount_point)], check=True)
        try:
            yield mount_point
        finally:
            subprocess.run(["umount", str(mount_point)], check=True)
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
        image.unlink()


def run_inflate(image: Image, repeat: int) -> None:
    """Time ``gzip -dc`` (and ``pigz -dc`` when installed) of the largest layer blob of
    ``image`` to ``/dev/null``: decompression alone on one thread."""
    blob = max(image.layers, key=os.path.getsize)
    print(
        f"\ninflate only, largest layer of {image.name} "
        f"({blob.stat().st_size / 1e6:.0f} MB gzip), output to /dev/null:"
    )
    commands = {"gzip -dc": f"gzip -dc < {blob} > /dev/null"}
    if shutil.which("pigz"):
        commands["pigz -dc"] = f"pigz -dc < {blob} > /dev/null"
    else:
        print("  pigz is not installed")
    for _ in range(repeat):
        for label, command in commands.items():
            with cpu_lock():
                load = load_average()
                started = time.perf_counter()
                subprocess.run(command, shell=True, check=True)
                seconds = time.perf_counter() - started
            print(f"  {seconds:8.2f} s  load {load}  {label}", flush=True)


def fill_store(store_root: Path, images: Sequence[Image], host: str) -> None:
    store = LayerStore(store_root)

    async def pull(reference: str) -> str:
        report = await store.pull(reference, insecure_registries=[host])
        return str(report.manifest_digest)

    for image in images:
        digest = asyncio.run(pull(f"{host}/bench/{image.name}:{TAG}"))
        if digest != image.reference:
            raise RuntimeError(f"{image.name}: pulled {digest}, expected {image.reference}")


def print_summary(bench: Bench, images: Sequence[Image], repeat: int) -> None:
    print(f"\nmedians of {repeat} runs, ratio = time / warmstart overlay time")
    labels = [CONTAINERD_UNPACK, TAR, OVERLAY, FLATTEN]
    for image in images:
        overlay = statistics.median(bench.results[(image.name, OVERLAY)])
        print(f"{image.name} ({image.compressed_bytes / 1e6:.0f} MB gzip):")
        for label in ["ctr content fetch", "ctr image pull", *labels]:
            runs = bench.results.get((image.name, label))
            if not runs:
                continue
            median = statistics.median(runs)
            listed = ", ".join(f"{value:.2f}" for value in runs)
            print(f"  {median:8.2f} s  {median / overlay:5.2f}x  {label}  [{listed}]")
        for label in (OVERLAY, FLATTEN):
            runs = bench.largest_layer[(image.name, label)]
            seconds = statistics.median(run[0] for run in runs)
            size = runs[0][1]
            print(
                f"  largest layer in {label}: {seconds:.2f} s for {size / 1e6:.0f} MB of tar "
                f"({size / seconds / 1e6:.0f} MB/s)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="OCI layout directory")
    parser.add_argument("--only", default="large,medium", help="comma-separated image names")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/warmstart-unpack-bench"),
        help="scratch directory for the registry, stores and outputs (removed at the end)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds to wait after removing the previous output, before each timed run",
    )
    parser.add_argument(
        "--fs-size",
        type=int,
        default=DEFAULT_FS_SIZE_GIB,
        help="GiB of the loop-mounted ext4 file system for outputs and stores; 0 to use --work",
    )
    parser.add_argument(
        "--skip-containerd", action="store_true", help="time tar and warmstart only"
    )
    parser.add_argument(
        "--skip-inflate", action="store_true", help="do not time decompression alone"
    )
    arguments = parser.parse_args()

    names = [name.strip() for name in arguments.only.split(",") if name.strip()]
    layouts = build_images(names, arguments.cache)
    images = []
    for name, layout in layouts.items():
        index = json.loads((layout / "index.json").read_text())
        blobs = layer_blobs(layout)
        images.append(
            Image(
                name=name,
                layout=layout,
                reference=index["manifests"][0]["digest"],
                layers=blobs,
                compressed_bytes=sum(blob.stat().st_size for blob in blobs),
            )
        )

    work: Path = arguments.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, True)
        if arguments.fs_size > 0:
            filesystem = cleanup.enter_context(
                loop_filesystem(work / "ext4.img", work / "fs", arguments.fs_size)
            )
            description = f"a {arguments.fs_size} GiB ext4 on a loop device"
        else:
            filesystem = work
            description = "the file system of --work"
        registry = RealRegistry.start(work / "registry")
        cleanup.callback(registry.stop)
        push_images(layouts, registry.host, registry)
        fill_store(filesystem / "store", images, registry.host)
        snapshotter = "overlayfs"
        if not arguments.skip_containerd:
            with Containerd.start(filesystem / "containerd") as daemon:
                if not daemon.plugin_works(SNAPSHOTTER_PLUGIN, "overlayfs"):
                    snapshotter = "native"
        bench = Bench(filesystem, work, arguments.settle, snapshotter)
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"kernel {platform.release()}; {run_command(['ctr', '--version']).strip()}, "
            f"snapshotter: {snapshotter}; outputs on {description}",
            flush=True,
        )
        store = filesystem / "store"
        for image in images:
            runs: list[Callable[[], None]] = [
                functools.partial(run_tar, bench, image),
                functools.partial(run_warmstart, bench, image, store, flatten=False),
                functools.partial(run_warmstart, bench, image, store, flatten=True),
            ]
            if not arguments.skip_containerd:
                runs.insert(0, functools.partial(run_containerd, bench, image, registry.host))
            for repetition in range(arguments.repeat):
                shift = repetition % len(runs)
                for run in runs[shift:] + runs[:shift]:
                    run()
        bench.prepare()
    print_summary(bench, images, arguments.repeat)
    if not arguments.skip_inflate:
        run_inflate(max(images, key=lambda image: image.compressed_bytes), arguments.repeat)


if __name__ == "__main__":
    main()

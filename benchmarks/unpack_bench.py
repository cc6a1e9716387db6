"""Unpack benchmark: warmstart against containerd and ``tar -xzf``, in one run.

Usage, from the repository root (the images come from ``python -m benchmarks.images build``)::

    python -m benchmarks.unpack_bench [--only large,medium] [--repeat 2] [--work DIR]

The images are pushed to a ``docker-registry`` started on 127.0.0.1, and for each image and
repetition these are timed, each into an empty directory on one file system (see below):

- containerd's unpack, as ``ctr image pull`` time minus ``ctr content fetch`` time. containerd
  runs with its unix socket and its root on that file system, and is restarted on an empty root
  before every ``ctr`` command, so both commands start from an empty content store.
- ``tar -xzf`` of each layer blob of the OCI layout, one after another, into one directory.
- ``warmstart unpack`` (the CLI) of the image already in a warmstart store, once in the overlay
  layout and once with ``--flatten``. The store is filled once by ``warmstart pull`` from the
  same registry, which is not timed.

The outputs, containerd's root and the warmstart store are on a fresh ext4 file system (with
a journal, mkfs defaults) in a ``--fs-size`` GiB file under ``--work``, mounted through a loop
device with direct I/O, which the script creates and removes (this needs root; ``--fs-size 0``
uses ``--work`` as it is). The reason: on ext4 without a journal, every inode allocation looks
up the inode table block to skip inodes freed less than 60 s ago (300 s more while the block is
dirty; ``recently_deleted()`` in ``fs/ext4/ialloc.c``). A benchmark that deletes gigabytes of
output between runs then spends up to 40 % of its CPU time there, and the same run took
between 15 s and 35 s on such a root file system.

Before every timed command the previous output is removed, ``sync`` runs, and the script waits
``--settle`` seconds. Each timed command holds the shared CPU lock ``/tmp/warmstart-cpu.lock``,
which is released in between.

Prints one line per measurement, then the medians and the ratios to warmstart's overlay layout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.images import DEFAULT_CACHE, build_images, push_images
from tests.registry.real import RealRegistry

from warmstart import LayerStore

TAG = "latest"
CPU_LOCK = Path("/tmp/warmstart-cpu.lock")
NAMESPACE = "bench"
CONTAINERD_START_TIMEOUT_S = 30.0
CTR_TIMEOUT_S = 1800.0
DEFAULT_FS_SIZE_GIB = 16

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


class Containerd:
    """A containerd of its own: root, state, config and socket under ``base``."""

    def __init__(self, base: Path, snapshotter: str) -> None:
        self.base = base
        self.snapshotter = snapshotter
        self.socket = base / "containerd.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> list[Path]:
        """Directories of the content store, snapshots and runtime state."""
        return [self.base / "root", self.base / "state"]

    def start_empty(self) -> None:
        """Stop containerd if it runs, remove its root and state, and start it again."""
        self.stop()
        for path in self.data:
            shutil.rmtree(path, ignore_errors=True)
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.base / "root"}"\n'
            f'state = "{self.base / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
        )
        log = (self.base / "containerd.log").open("ab")
        self.process = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + CONTAINERD_START_TIMEOUT_S
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.base / "containerd.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"containerd did not start; its log:\n{log_text[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop containerd by its PID: SIGTERM, then SIGKILL after 30 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def ctr(self, *arguments: str) -> str:
        """Run ``ctr`` against this containerd and return its standard output.

        Raises ``RuntimeError`` with ctr's error output when it fails.
        """
        command = ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *arguments]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=CTR_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        return result.stdout

    def overlayfs_works(self) -> bool:
        """Return whether the overlayfs snapshotter plugin loaded (``ctr plugins ls``)."""
        for line in self.ctr("plugins", "ls").splitlines():
            fields = line.split()
            if fields[:2] == ["io.containerd.snapshotter.v1", "overlayfs"]:
                return fields[-1] == "ok"
        return False


class Bench:
    def __init__(self, work: Path, settle_s: float) -> None:
        self.work = work
        self.settle_s = settle_s
        self.output = work / "out"
        self.results: dict[tuple[str, str], list[float]] = defaultdict(list)

    def prepare(self, *paths: Path) -> None:
        """Remove earlier output, flush the file system, and wait out ext4's inode reuse delay."""
        for path in (self.output, *paths):
            shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["sync"], check=True)
        time.sleep(self.settle_s)

    def timed(self, image: str, label: str, command: Sequence[str]) -> float:
        """Run ``command`` under the CPU lock and return its wall time in seconds."""
        with cpu_lock():
            load = load_average()
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
        print(f"{image:7} {seconds:8.2f} s  load {load}  {label}", flush=True)
        return seconds

    def record(self, image: str, label: str, seconds: float) -> None:
        self.results[(image, label)].append(seconds)


def run_containerd(bench: Bench, containerd: Containerd, image: Image, host: str) -> None:
    reference = f"{host}/bench/{image.name}:{TAG}"
    ctr = ["ctr", "--address", str(containerd.socket), "--namespace", NAMESPACE]
    containerd.stop()
    bench.prepare(*containerd.data)
    containerd.start_empty()
    fetch = bench.timed(
        image.name, "ctr content fetch", [*ctr, "content", "fetch", "--plain-http", reference]
    )
    containerd.stop()
    bench.prepare(*containerd.data)
    containerd.start_empty()
    pull = bench.timed(
        image.name,
        f"ctr image pull ({containerd.snapshotter} snapshotter)",
        [*ctr, "image", "pull", "--plain-http", "--snapshotter", containerd.snapshotter, reference],
    )
    containerd.stop()
    for path in containerd.data:
        shutil.rmtree(path, ignore_errors=True)
    bench.record(image.name, "ctr content fetch", fetch)
    bench.record(image.name, "ctr image pull", pull)
    bench.record(image.name, CONTAINERD_UNPACK, pull - fetch)
    print(f"{image.name:7} {pull - fetch:8.2f} s  {CONTAINERD_UNPACK}", flush=True)


def run_tar(bench: Bench, image: Image) -> None:
    bench.prepare()
    bench.output.mkdir(parents=True)
    script = " && ".join(f"tar -C {bench.output} -xzf {blob}" for blob in image.layers)
    bench.record(image.name, TAR, bench.timed(image.name, TAR, ["sh", "-c", script]))


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
    ]
    if flatten:
        command.append("--flatten")
    bench.record(image.name, label, bench.timed(image.name, label, command))


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


def run_inflate(blob: Path, repeat: int) -> None:
    """Time decompression alone of one gzip blob: gzip, pigz if installed, and warmstart's
    decoder (the ``inflate`` example of the layerstore crate, built here in release mode)."""
    repository = Path(__file__).resolve().parent.parent
    with cpu_lock():
        subprocess.run(
            ["cargo", "build", "--quiet", "--release", "-p", "layerstore", "--example", "inflate"],
            cwd=repository,
            check=True,
        )
    target = Path(os.environ.get("CARGO_TARGET_DIR", repository / "target"))
    example = target / "release" / "examples" / "inflate"
    size = blob.stat().st_size
    print(f"\ninflate only, {blob.name[:12]} ({size / 1e6:.0f} MB gzip), output to /dev/null:")
    commands = [("gzip -dc", f"gzip -dc < {blob} > /dev/null")]
    if shutil.which("pigz"):
        commands.append(("pigz -dc", f"pigz -dc < {blob} > /dev/null"))
    else:
        print("  pigz is not installed")
    for _ in range(repeat):
        for label, command in commands:
            with cpu_lock():
                load = load_average()
                started = time.perf_counter()
                subprocess.run(command, shell=True, check=True)
                seconds = time.perf_counter() - started
            print(f"  {seconds:8.2f} s  load {load}  {label}", flush=True)
        with cpu_lock():
            load = load_average()
            output = subprocess.run(
                [str(example), str(blob)], capture_output=True, text=True, check=True
            ).stdout
        print(f"  warmstart decoder, load {load}:")
        for line in output.splitlines()[1:]:
            print(f"  {line}", flush=True)


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
        containerd = bench.results.get((image.name, CONTAINERD_UNPACK))
        tar = statistics.median(bench.results[(image.name, TAR)])
        flatten = statistics.median(bench.results[(image.name, FLATTEN)])
        if containerd:
            unpack = statistics.median(containerd)
            print(
                f"  containerd unpack / warmstart: {unpack / overlay:.2f}x (overlay), "
                f"{unpack / flatten:.2f}x (flatten)"
            )
        print(
            f"  tar -xzf / warmstart: {tar / overlay:.2f}x (overlay), "
            f"{tar / flatten:.2f}x (flatten)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="OCI layout directory")
    parser.add_argument("--only", default="large,medium", help="comma-separated image names")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each measurement")
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
        bench = Bench(filesystem, arguments.settle)
        containerd = Containerd(filesystem / "containerd", "overlayfs")
        cleanup.callback(containerd.stop)
        fill_store(filesystem / "store", images, registry.host)
        if not arguments.skip_containerd:
            containerd.start_empty()
            if not containerd.overlayfs_works():
                containerd.snapshotter = "native"
            containerd.stop()
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"kernel {platform.release()}; containerd snapshotter: {containerd.snapshotter}; "
            f"outputs on {description}",
            flush=True,
        )
        for _ in range(arguments.repeat):
            for image in images:
                if not arguments.skip_containerd:
                    run_containerd(bench, containerd, image, registry.host)
                run_tar(bench, image)
                run_warmstart(bench, image, filesystem / "store", flatten=False)
                run_warmstart(bench, image, filesystem / "store", flatten=True)
    print_summary(bench, images, arguments.repeat)
    if not arguments.skip_inflate:
        largest = max((blob for image in images for blob in image.layers), key=os.path.getsize)
        run_inflate(largest, arguments.repeat)


if __name__ == "__main__":
    main()

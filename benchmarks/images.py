"""Generate the benchmark images from real files and push them to a registry.

Images (sizes are of the gzip-compressed layers, which is what a pull moves):

- ``large``: about 2 GB in 4 layers, the first about 1.1 GB, to measure chunked pulls of one
  big blob against per-connection rate limits.
- ``medium``: about 200 MB in 5 layers, a typical application image.
- ``small``: 20 layers of about 1 MB, for warm-pull timing where per-blob overhead dominates.

Layer content is a tar of real files: a virtualenv with numpy, scipy, pandas, pyarrow and
scikit-learn installed from PyPI (shared libraries, Python sources, data files), then
``/usr/lib``, ``/usr/share`` and ``/usr/bin``. Once every file has been used the walk starts over
under a new top-level directory and in a different order, until the layer reaches its size.
Layers are gzip level 1, compressed in parallel on every core as one standard gzip member.

Each image is an OCI layout under the cache directory (default ``/work/bench-images``, or
``$WARMSTART_BENCH_IMAGES``), tagged ``latest``. A build is skipped when its layout exists.

Usage, from the repository root::

    python -m benchmarks.images build [--cache DIR] [--only large,medium,small]
    python -m benchmarks.images push --registry 127.0.0.1:5000 [--only ...]
    python -m benchmarks.images push --start-registry [--only ...]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from tests.registry.layout import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, REF_NAME
from tests.registry.real import RealRegistry, skopeo_push

DEFAULT_CACHE = Path(os.environ.get("WARMSTART_BENCH_IMAGES", "/work/bench-images"))
TAG = "latest"
MB = 1_000_000
# Packages whose wheels bring large, real binaries and sources into the source virtualenv.
WHEELS = ("numpy", "scipy", "pandas", "pyarrow", "scikit-learn")
SYSTEM_DIRECTORIES = ("/usr/lib", "/usr/share", "/usr/bin")
# The tar stream is cut into pieces of this size, each deflated by a worker process.
PIECE_SIZE = 4 * 1024 * 1024
GZIP_LEVEL = 1
EPOCH = 1_700_000_000


@dataclass(frozen=True)
class ImageSpec:
    """A benchmark image: its name and the target compressed size of each layer, in bytes."""

    name: str
    layer_sizes: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.layer_sizes)


IMAGES = {
    spec.name: spec
    for spec in (
        ImageSpec("large", (1100 * MB, 600 * MB, 250 * MB, 50 * MB)),
        ImageSpec("medium", (80 * MB, 50 * MB, 35 * MB, 25 * MB, 10 * MB)),
        ImageSpec("small", (1 * MB,) * 20),
    )
}


@dataclass(frozen=True)
class LayerResult:
    """A written layer: compressed digest and size, and the diff_id of the uncompressed tar."""

    digest: str
    size: int
    diff_id: str
    uncompressed_size: int
    files: int


# Sources.


def source_venv(cache: Path) -> Path:
    """Create ``cache/sources/venv`` with ``WHEELS`` installed, once, and return it.

    Raises ``subprocess.CalledProcessError`` when venv creation or pip fails.
    """
    venv = cache / "sources" / "venv"
    done = venv / ".installed"
    if done.exists():
        return venv
    print(f"installing {', '.join(WHEELS)} into {venv} for real layer content", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", *WHEELS], check=True, timeout=1800
    )
    done.write_text("\n".join(WHEELS) + "\n")
    return venv


def list_files(roots: Sequence[Path]) -> list[tuple[Path, str]]:
    """Return ``(path, name in the archive)`` for every readable regular file, sorted."""
    files = []
    for root in roots:
        for directory, subdirectories, names in os.walk(root):
            subdirectories.sort()
            for name in sorted(names):
                path = Path(directory) / name
                if path.is_symlink() or not path.is_file() or not os.access(path, os.R_OK):
                    continue
                files.append((path, str(path.relative_to("/"))))
    return files


def file_stream(files: Sequence[tuple[Path, str]], seed: int) -> Iterator[tuple[Path, str]]:
    """Yield the files forever: round 0 in sorted order, later rounds shuffled, each round under
    its own ``round-N/`` prefix so no two archive members share a name."""
    rounds = 0
    while True:
        order = list(files)
        if rounds:
            random.Random(seed * 1000 + rounds).shuffle(order)
        for path, name in order:
            yield path, f"round-{rounds}/{name}"
        rounds += 1


# Parallel gzip.


def deflate_piece(data: bytes) -> bytes:
    """Deflate one piece as raw deflate blocks ending on a byte boundary (``Z_SYNC_FLUSH``).

    Concatenated, such pieces plus a final empty block form one valid deflate stream, which is
    how pigz compresses in parallel. Each piece starts with an empty window, so the output is a
    little larger than a serial gzip of the same data.
    """
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


class ParallelGzipWriter:
    """A file-like sink for a tar stream that writes one gzip member with a process pool.

    It tracks the sha256 and length of both the uncompressed input (the diff_id) and the
    compressed output (the blob digest).
    """

    def __init__(
        self,
        out: Any,
        pool: concurrent.futures.ProcessPoolExecutor,
        workers: int,
        ratio_hint: float,
    ) -> None:
        self.out = out
        self.pool = pool
        self.pending: deque[concurrent.futures.Future[bytes]] = deque()
        self.buffer = bytearray()
        self.crc = 0
        self.uncompressed = hashlib.sha256()
        self.uncompressed_size = 0
        self.compressed = hashlib.sha256()
        self.compressed_size = 0
        # Two pieces per worker keep every core busy with bounded memory.
        self.max_pending = 2 * workers
        # Compressed/uncompressed ratio assumed until the first piece comes back.
        self.ratio_hint = ratio_hint
        # Magic, deflate, no flags, mtime 0, no extra flags, OS unknown (RFC 1952).
        self._emit(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def write(self, data: bytes) -> int:
        self.buffer += data
        self.crc = zlib.crc32(data, self.crc)
        self.uncompressed.update(data)
        self.uncompressed_size += len(data)
        while len(self.buffer) >= PIECE_SIZE:
            self._submit(bytes(self.buffer[:PIECE_SIZE]))
            del self.buffer[:PIECE_SIZE]
        return len(data)

    def estimated_compressed_size(self) -> int:
        """Return the output so far plus an estimate for pieces still being compressed."""
        if self.uncompressed_size == 0:
            return 0
        in_flight = len(self.pending) * PIECE_SIZE + len(self.buffer)
        done = self.uncompressed_size - in_flight
        ratio = self.compressed_size / done if done > 0 else self.ratio_hint
        return self.compressed_size + int(in_flight * ratio)

    def close(self) -> None:
        if self.buffer:
            self._submit(bytes(self.buffer))
            self.buffer.clear()
        while self.pending:
            self._emit(self.pending.popleft().result())
        final = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._emit(final.flush(zlib.Z_FINISH))
        self._emit(struct.pack("<II", self.crc, self.uncompressed_size & 0xFFFFFFFF))

    def _submit(self, piece: bytes) -> None:
        self.pending.append(self.pool.submit(deflate_piece, piece))
        while len(self.pending) > self.max_pending or (self.pending and self.pending[0].done()):
            self._emit(self.pending.popleft().result())

    def _emit(self, data: bytes) -> None:
        self.out.write(data)
        self.compressed.update(data)
        self.compressed_size += len(data)


def write_layer(
    blobs: Path,
    files: Iterator[tuple[Path, str]],
    target_size: int,
    pool: concurrent.futures.ProcessPoolExecutor,
    workers: int,
    ratio_hint: float,
) -> LayerResult:
    """Write a gzip tar layer of about ``target_size`` compressed bytes into ``blobs``."""
    temporary = blobs / f".layer-{os.getpid()}.tmp"
    count = 0
    with temporary.open("wb") as out:
        writer = ParallelGzipWriter(out, pool, workers, ratio_hint)
        # A stream-mode archive only calls write() on its file object.
        sink = cast(IO[bytes], writer)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as archive:
            while writer.estimated_compressed_size() < target_size:
                path, name = next(files)
                try:
                    info = archive.gettarinfo(str(path), arcname=name)
                    info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "", ""
                    with path.open("rb") as handle:
                        archive.addfile(info, handle)
                except OSError as error:
                    # A file can vanish or shrink between the walk and the read.
                    print(f"  skipped {path}: {error}", file=sys.stderr)
                    continue
                count += 1
        writer.close()
    digest = writer.compressed.hexdigest()
    temporary.rename(blobs / digest)
    return LayerResult(
        f"sha256:{digest}",
        writer.compressed_size,
        f"sha256:{writer.uncompressed.hexdigest()}",
        writer.uncompressed_size,
        count,
    )


# Images.


def write_json_blob(blobs: Path, value: Any) -> tuple[str, int]:
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def write_image_json(layout: Path, layers: Sequence[LayerResult]) -> None:
    """Write the config, manifest and ``index.json`` (tag ``latest``) for ``layers``."""
    blobs = layout / "blobs" / "sha256"
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
    }
    config_digest, config_size = write_json_blob(blobs, config)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    manifest_digest, manifest_size = write_json_blob(blobs, manifest)
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {REF_NAME: TAG},
            }
        ],
    }
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    # index.json is written last: its presence marks a complete build.
    (layout / "index.json").write_text(json.dumps(index, indent=2))


def build_image(spec: ImageSpec, cache: Path, sources: Sequence[tuple[Path, str]]) -> Path:
    """Build one image as an OCI layout at ``cache/NAME`` unless it exists; return the path."""
    layout = cache / spec.name
    if (layout / "index.json").exists():
        print(f"{spec.name}: already built at {layout}", flush=True)
        return layout
    partial = cache / f"{spec.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    blobs = partial / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    started = time.monotonic()

    files = file_stream(sources, seed=len(spec.name))
    layers = []
    ratio_hint = 0.35
    workers = os.cpu_count() or 1
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        for position, size in enumerate(spec.layer_sizes, start=1):
            layer = write_layer(blobs, files, size, pool, workers, ratio_hint)
            ratio_hint = layer.size / max(layer.uncompressed_size, 1)
            layers.append(layer)
            print(
                f"{spec.name}: layer {position}/{len(spec.layer_sizes)} "
                f"{layer.size / MB:.1f} MB gzip from {layer.uncompressed_size / MB:.1f} MB "
                f"in {layer.files} files",
                flush=True,
            )
    write_image_json(partial, layers)
    partial.rename(layout)
    elapsed = time.monotonic() - started
    total = sum(layer.size for layer in layers)
    print(
        f"{spec.name}: {len(layers)} layers, {total / MB:.1f} MB compressed, "
        f"built in {elapsed:.1f} s at {layout}",
        flush=True,
    )
    return layout


def build_images(names: Sequence[str], cache: Path) -> dict[str, Path]:
    """Build the named images (skipping those already built) and return their layouts."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [name for name in names if not (cache / name / "index.json").exists()]
    sources: list[tuple[Path, str]] = []
    if missing:
        venv = source_venv(cache)
        sources = list_files([venv, *map(Path, SYSTEM_DIRECTORIES)])
        print(f"{len(sources)} source files", flush=True)
    return {name: build_image(IMAGES[name], cache, sources) for name in names}


def layout_size(layout: Path) -> int:
    return sum(path.stat().st_size for path in (layout / "blobs").rglob("*") if path.is_file())


def push_images(layouts: dict[str, Path], host: str, registry: RealRegistry | None = None) -> None:
    """Push each layout's ``latest`` tag to ``host/bench/NAME:latest`` and print the time."""
    for name, layout in layouts.items():
        started = time.monotonic()
        if registry is not None:
            registry.push_layout(layout, TAG, f"bench/{name}", TAG)
        else:
            skopeo_push(layout, TAG, f"{host}/bench/{name}:{TAG}", all_images=False)
        elapsed = time.monotonic() - started
        size = layout_size(layout)
        print(
            f"pushed {name} ({size / MB:.1f} MB) to {host}/bench/{name}:{TAG} in {elapsed:.1f} s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "push"))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="layout directory")
    parser.add_argument(
        "--only", default=",".join(IMAGES), help=f"comma-separated subset of {', '.join(IMAGES)}"
    )
    parser.add_argument("--registry", help="HOST:PORT of a plain-HTTP registry to push to")
    parser.add_argument(
        "--start-registry",
        action="store_true",
        help="start docker-registry on 127.0.0.1 in a temporary directory, push, then stop it",
    )
    arguments = parser.parse_args()

    names = [name.strip() for name in arguments.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(IMAGES))
    if unknown:
        parser.error(f"unknown image {', '.join(unknown)}; choose from {', '.join(IMAGES)}")

    layouts = build_images(names, arguments.cache)
    if arguments.command == "build":
        return
    if arguments.start_registry:
        with tempfile.TemporaryDirectory(prefix="bench-registry-") as directory:
            registry = RealRegistry.start(Path(directory))
            try:
                push_images(layouts, registry.host, registry)
            finally:
                registry.stop()
    elif arguments.registry:
        push_images(layouts, arguments.registry)
    else:
        parser.error("push needs --registry HOST:PORT or --start-registry")


if __name__ == "__main__":
    main()

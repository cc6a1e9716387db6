"""Layer store benchmarks: put throughput and memory, and parallel verify.

Usage: python benchmarks/store_bench.py [--work DIR] [--size-gib N] [--repeat N]

Figures, each measured side by side with its baseline in the same run:
- put of a 1 GiB file of real content (shared libraries and Python sources from this machine,
  concatenated) versus Python's ``hashlib.sha256`` reading the same file (the single-core hashing
  limit) and versus ``dd conv=fsync`` copying it (the disk's durable write limit, which a put
  also pays because it fsyncs before commit). The file is in the page cache for all three.
- peak resident memory of a process doing that put (``ru_maxrss``), against an idle interpreter.
- ``verify`` of a store with 2 GiB in 200 blobs versus single-core ``hashlib`` over the same files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from warmstart import LayerStore

CHUNK = 1 << 20
SOURCE_DIRECTORIES = ["/usr/lib", "/usr/share", "/usr/local/lib", "/root/.pyenv"]


def real_files() -> Iterator[Path]:
    """Yield regular files from system directories in a stable order."""
    for root in SOURCE_DIRECTORIES:
        for directory, subdirectories, files in os.walk(root):
            subdirectories.sort()
            for name in sorted(files):
                path = Path(directory) / name
                if path.is_file() and not path.is_symlink() and path.stat().st_size > 4096:
                    yield path


def write_real_content(target: Path, size: int) -> None:
    """Write `size` bytes made of real files, cycling through them if needed."""
    written = 0
    with target.open("wb") as output:
        while written < size:
            for path in real_files():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                data = data[: size - written]
                output.write(data)
                written += len(data)
                if written >= size:
                    break


def hash_files(paths: list[Path]) -> float:
    """Return the seconds hashlib.sha256 takes to hash `paths` one after another."""
    began = time.perf_counter()
    for path in paths:
        hasher = hashlib.sha256()
        with path.open("rb") as source:
            while chunk := source.read(CHUNK):
                hasher.update(chunk)
    return time.perf_counter() - began


def copy_with_dd(source: Path, target: Path) -> float:
    """Return the seconds `dd conv=fsync` takes to copy `source`: the disk's durable write rate."""
    target.unlink(missing_ok=True)
    subprocess.run(["sync"], check=True)
    began = time.perf_counter()
    subprocess.run(
        ["dd", f"if={source}", f"of={target}", "bs=1M", "conv=fsync", "status=none"], check=True
    )
    elapsed = time.perf_counter() - began
    target.unlink()
    return elapsed


def peak_rss_of(code: str) -> int:
    """Run `code` in a fresh interpreter and return its peak resident set size in bytes.

    Reads ``VmHWM`` from ``/proc/self/status``: unlike ``ru_maxrss``, it starts afresh at exec
    instead of inheriting the parent's peak.
    """
    script = (
        f"{code}\n"
        "status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "print(int(status.split()[0]) * 1024)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    return int(output.split()[-1])


def bench_put(work: Path, size: int, repeat: int) -> dict[str, float]:
    source = work / "real-content.bin"
    if not source.exists() or source.stat().st_size != size:
        write_real_content(source, size)
    hash_files([source])  # warm the page cache
    hashlib_times, put_times, dd_times = [], [], []
    for attempt in range(repeat):
        hashlib_times.append(hash_files([source]))
        dd_times.append(copy_with_dd(source, work / "dd-copy.bin"))
        subprocess.run(["sync"], check=True)
        store_root = work / f"put-store-{attempt}"
        store = LayerStore(store_root)
        began = time.perf_counter()
        store.put_file(source)
        put_times.append(time.perf_counter() - began)
        shutil.rmtree(store_root)
    store_root = work / "rss-store"
    put_code = f"from warmstart import LayerStore\nLayerStore({str(store_root)!r})"
    put_rss = peak_rss_of(f"{put_code}.put_file({str(source)!r})")
    idle_rss = peak_rss_of("import warmstart")
    shutil.rmtree(store_root)
    best_hash, best_put, best_dd = min(hashlib_times), min(put_times), min(dd_times)
    return {
        "bytes": size,
        "hashlib_s": best_hash,
        "dd_fsync_s": best_dd,
        "put_s": best_put,
        "put_to_dd_fsync_ratio": best_dd / best_put,
        "hashlib_mb_s": size / best_hash / 1e6,
        "put_mb_s": size / best_put / 1e6,
        "put_to_hashlib_ratio": best_hash / best_put,
        "put_peak_rss_mib": put_rss / 2**20,
        "idle_peak_rss_mib": idle_rss / 2**20,
    }


def bench_verify(work: Path, blobs: int, blob_size: int, repeat: int) -> dict[str, float]:
    store = LayerStore(work / "verify-store")
    if len(store.list()) != blobs:
        source = work / "real-content.bin"
        with source.open("rb") as content:
            for index in range(blobs):
                content.seek((index * 7919 * 4096) % max(1, source.stat().st_size - blob_size))
                store.put(content.read(blob_size - 8) + index.to_bytes(8, "little"))
    paths = [store.path(blob.digest) for blob in store.list()]
    hash_files(paths)  # warm the page cache
    single, parallel = [], []
    for _ in range(repeat):
        single.append(hash_files(paths))
        began = time.perf_counter()
        report = store.verify()
        parallel.append(time.perf_counter() - began)
        assert report.ok, report.problems
    total = sum(p.stat().st_size for p in paths)
    return {
        "blobs": len(paths),
        "bytes": total,
        "hashlib_single_core_s": min(single),
        "verify_s": min(parallel),
        "verify_to_single_core_ratio": min(single) / min(parallel),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: temp)")
    parser.add_argument("--size-gib", type=float, default=1.0, help="put file size in GiB")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best counts")
    arguments = parser.parse_args()
    work = arguments.work or Path(tempfile.mkdtemp(prefix="warmstart-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    size = int(arguments.size_gib * 2**30)
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join(["python", *sys.argv]),
        "put": bench_put(work, size, arguments.repeat),
        "verify": bench_verify(work, blobs=200, blob_size=size * 2 // 200, repeat=arguments.repeat),
    }
    print(json.dumps(results, indent=2))
    if arguments.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

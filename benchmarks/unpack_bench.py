"""Unpack benchmark: warmstart's overlay and flatten layouts against ``tar -xzf`` per layer.

Builds an image from real files on this machine (each layer a gzip tar of one directory,
cached in --work), stores it, then times each way of unpacking it into a fresh directory:

    python benchmarks/unpack_bench.py [--work DIR] [--repeat N] [--layer DIR ...]

Prints one line per measurement: seconds, uncompressed MiB/s and the command measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from warmstart import LayerStore

DEFAULT_LAYERS = ["/usr/share", "/usr/lib/python3", "/usr/lib/x86_64-linux-gnu/perl"]
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def build_layer(source: Path, work: Path) -> tuple[Path, str, int]:
    """Return a cached gzip tar of `source`, its diff_id and its uncompressed size in bytes."""
    name = source.as_posix().strip("/").replace("/", "_")
    blob = work / f"{name}.tar.gz"
    meta = work / f"{name}.json"
    if not blob.exists() or not meta.exists():
        tar = work / f"{name}.tar"
        subprocess.run(
            ["tar", "-C", "/", "-cf", str(tar), source.as_posix().lstrip("/")], check=True
        )
        digest = hashlib.sha256()
        with tar.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        size = tar.stat().st_size
        subprocess.run(["gzip", "-6", "-f", str(tar)], check=True)
        meta.write_text(json.dumps({"diff_id": "sha256:" + digest.hexdigest(), "size": size}))
    info = json.loads(meta.read_text())
    return blob, info["diff_id"], info["size"]


def store_image(store: LayerStore, layers: list[tuple[Path, str, int]]) -> None:
    descriptors = []
    for blob, _, _ in layers:
        info = store.put_file(blob)
        descriptors.append({"mediaType": GZIP, "digest": info.digest, "size": info.size})
    config = json.dumps(
        {"rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id, _ in layers]}}
    ).encode()
    config_info = store.put(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_info.digest,
            "size": config_info.size,
        },
        "layers": descriptors,
    }
    store.tag("bench", store.put(json.dumps(manifest).encode()).digest)


def timed(label: str, uncompressed: int, run: object, clean: Path) -> float:
    shutil.rmtree(clean, ignore_errors=True)
    subprocess.run(["sync"], check=True)
    started = time.perf_counter()
    assert callable(run)
    run()
    seconds = time.perf_counter() - started
    print(f"{seconds:8.2f} s  {uncompressed / seconds / 2**20:8.1f} MiB/s  {label}")
    shutil.rmtree(clean, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/warmstart-unpack-bench"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--layer", action="append", default=None, metavar="DIR")
    arguments = parser.parse_args()
    work: Path = arguments.work
    work.mkdir(parents=True, exist_ok=True)
    layers = [build_layer(Path(p), work) for p in arguments.layer or DEFAULT_LAYERS]
    store = LayerStore(work / "store")
    store_image(store, layers)
    total = sum(size for _, _, size in layers)
    compressed = sum(blob.stat().st_size for blob, _, _ in layers)
    print(
        f"image: {len(layers)} layers, {compressed / 2**20:.0f} MiB gzip, "
        f"{total / 2**20:.0f} MiB tar, {os.cpu_count()} cores"
    )
    out = work / "out"

    def tar_each() -> None:
        out.mkdir(parents=True)
        for blob, _, _ in layers:
            subprocess.run(["tar", "-C", str(out), "-xzf", str(blob)], check=True)

    biggest = max(layers, key=lambda layer: layer[2])
    for _ in range(arguments.repeat):
        timed("tar -xzf, one layer after another", total, tar_each, out)
        timed(
            "warmstart unpack (overlay layout, layers in parallel)",
            total,
            lambda: store.unpack("bench", out),
            out,
        )
        timed(
            "warmstart unpack --flatten",
            total,
            lambda: store.unpack("bench", out, flatten=True),
            out,
        )

        def biggest_tar() -> None:
            out.mkdir(parents=True)
            subprocess.run(["tar", "-C", str(out), "-xzf", str(biggest[0])], check=True)

        timed(
            f"tar -xzf of the largest layer alone ({biggest[0].name})", biggest[2], biggest_tar, out
        )

        def gunzip_only() -> None:
            out.mkdir(parents=True)
            subprocess.run(f"gzip -dc {biggest[0]} > /dev/null", shell=True, check=True)

        timed("gzip -dc of the largest layer to /dev/null", biggest[2], gunzip_only, out)


if __name__ == "__main__":
    main()

"""Mirror benchmarks: second-node pull, cold mirror under 8 clients, warm serving throughput.

Run: ``python benchmarks/mirror_bench.py [--layers 4] [--layer-mib 64] [--rate-mib 8]``.
Everything runs on 127.0.0.1: a docker-registry origin behind ``mirror_throttle.py`` (each
connection limited to ``--rate-mib`` MiB/s, like a remote registry), ``warmstart mirror`` in its
own process, and clients that pull with warmstart's chunked puller, ``curl`` or ``cat``. Each
step has a timeout, and every process started here is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from warmstart import LayerStore

HERE = Path(__file__).resolve().parent
STEP_TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not respond within {timeout_s} s") from None
            time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def make_image(layout: Path, layers: int, layer_mib: int) -> int:
    """Write an OCI image of incompressible gzip layers; returns the bytes of all its blobs."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    total = 0

    def blob(data: bytes) -> dict[str, object]:
        nonlocal total
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        total += len(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    descriptors, diff_ids = [], []
    for number in range(layers):
        content = random.Random(number).randbytes(layer_mib << 20)
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as archive:
            info = tarfile.TarInfo(f"layer-{number}.bin")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        diff_ids.append("sha256:" + hashlib.sha256(raw.getvalue()).hexdigest())
        data = gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)
        descriptors.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(data)}
        )
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **blob(json.dumps(config).encode()),
        },
        "layers": descriptors,
    }
    descriptor = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **blob(json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    return total


class Bench:
    def __init__(self, work: Path, rate_mib: float) -> None:
        self.work = work
        self.rate_mib = rate_mib
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], log: str) -> subprocess.Popen[bytes]:
        output = (self.work / log).open("ab")
        process = subprocess.Popen(command, stdout=output, stderr=output)
        output.close()
        self.processes.append(process)
        return process

    def origin(self) -> int:
        port = free_port()
        config = self.work / "registry.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.work / 'registry'}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        self.start(["/usr/bin/docker-registry", "serve", str(config)], "registry.log")
        wait_http(f"http://127.0.0.1:{port}/v2/")
        return port

    @contextmanager
    def throttle(self, target_port: int) -> Iterator[tuple[int, list[int]]]:
        """Run the throttling proxy; after the block, the list holds the bytes it relayed."""
        port = free_port()
        command = [
            sys.executable,
            str(HERE / "mirror_throttle.py"),
            str(port),
            str(target_port),
            str(self.rate_mib),
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE)
        self.processes.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
        relayed: list[int] = []
        try:
            yield port, relayed
        finally:
            os.kill(process.pid, signal.SIGTERM)
            relayed.append(int(process.stdout.readline().strip() or 0))
            process.wait(timeout=10)
            process.stdout.close()

    @contextmanager
    def mirror(self, upstream_port: int, store: Path) -> Iterator[int]:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "warmstart",
            "mirror",
            "--store",
            str(store),
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"http://127.0.0.1:{upstream_port}",
        ]
        process = self.start(command, "mirror.log")
        try:
            wait_http(f"http://127.0.0.1:{port}/v2/")
            yield port
        finally:
            stop(process)

    def close(self) -> None:
        for process in self.processes:
            stop(process)


async def pull(store: Path, reference: str) -> float:
    """Pull into a fresh store with the chunked puller; returns seconds."""
    started = time.perf_counter()
    await asyncio.wait_for(LayerStore(store).pull(reference), STEP_TIMEOUT_S)
    return time.perf_counter() - started


async def pull_many(stores: list[Path], reference: str) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(pull(store, reference) for store in stores))
    return time.perf_counter() - started


def run_parallel(commands: list[list[str]]) -> float:
    started = time.perf_counter()
    processes = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in commands]
    for process in processes:
        if process.wait(timeout=STEP_TIMEOUT_S) != 0:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mib", type=int, default=64)
    parser.add_argument("--rate-mib", type=float, default=8.0, help="MiB/s per origin connection")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--layout",
        type=Path,
        default=None,
        help="serve this OCI layout's 'latest' tag (e.g. a benchmark image from "
        "`python -m benchmarks.images build`) instead of generating an image",
    )
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="warmstart-mirror-bench-"))
    bench = Bench(work, arguments.rate_mib)
    results: dict[str, float] = {}
    try:
        if arguments.layout is not None:
            shutil.copytree(arguments.layout, work / "image")
            index = json.loads((work / "image" / "index.json").read_text())
            for entry in index["manifests"]:
                entry.setdefault("annotations", {})["org.opencontainers.image.ref.name"] = "v1"
            (work / "image" / "index.json").write_text(json.dumps(index))
            image_bytes = sum(p.stat().st_size for p in (work / "image" / "blobs").rglob("*"))
        else:
            image_bytes = make_image(work / "image", arguments.layers, arguments.layer_mib)
        results["image_mib"] = image_bytes / (1 << 20)
        origin = bench.origin()
        subprocess.run(
            [
                "skopeo",
                "--insecure-policy",
                "copy",
                "--preserve-digests",
                "--dest-tls-verify=false",
                f"oci:{work / 'image'}:v1",
                f"docker://127.0.0.1:{origin}/bench/app:v1",
            ],
            check=True,
            capture_output=True,
            timeout=STEP_TIMEOUT_S,
        )

        # 1. A second node pulls from a warm mirror versus from the throttled origin.
        with bench.throttle(origin) as (proxy, _), bench.mirror(proxy, work / "m1") as mirror:
            results["first_node_cold_mirror_s"] = asyncio.run(
                pull(work / "n1", f"127.0.0.1:{mirror}/bench/app:v1")
            )
            results["second_node_mirror_s"] = asyncio.run(
                pull(work / "n2", f"127.0.0.1:{mirror}/bench/app:v1")
            )
            results["node_origin_s"] = asyncio.run(
                pull(work / "n3", f"127.0.0.1:{proxy}/bench/app:v1")
            )

        # 2. One and then N clients through a cold mirror: time and bytes from the upstream.
        with bench.throttle(origin) as (proxy, relayed), bench.mirror(proxy, work / "m2") as mirror:
            results["cold_1_client_s"] = asyncio.run(
                pull_many([work / "c1"], f"127.0.0.1:{mirror}/bench/app:v1")
            )
        results["cold_1_client_upstream_mib"] = relayed[0] / (1 << 20)
        clients = [work / f"c{arguments.clients}-{n}" for n in range(arguments.clients)]
        with bench.throttle(origin) as (proxy, relayed), bench.mirror(proxy, work / "m3") as mirror:
            results["cold_n_clients_s"] = asyncio.run(
                pull_many(clients, f"127.0.0.1:{mirror}/bench/app:v1")
            )
            # 3. The warm mirror's serving throughput per client, against cat of the same files.
            store = LayerStore(work / "m3")
            layers = [b for b in store.list() if b.size > 1 << 20]
            urls = [f"http://127.0.0.1:{mirror}/v2/bench/app/blobs/{b.digest}" for b in layers]
            paths = [str(store.path(b.digest)) for b in layers]
            served = sum(b.size for b in layers) / (1 << 20)
            subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True)
            for count in (1, arguments.clients):
                curl = [["curl", "-sf", *(a for u in urls for a in (u, "-o", "/dev/null"))]] * count
                cat = [["cat", *paths]] * count
                results[f"warm_{count}_mirror_mib_s_per_client"] = served / (run_parallel(curl) / 1)
                results[f"warm_{count}_cat_mib_s_per_client"] = served / run_parallel(cat)
        results["cold_n_clients_upstream_mib"] = relayed[0] / (1 << 20)
        results["clients"] = arguments.clients
        results["rate_mib_s_per_connection"] = arguments.rate_mib
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: round(v, 3) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()

"""Fixtures for mirror tests: a real upstream registry, generated images, skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool

REGISTRY_START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Registry:
    """A docker-registry process on 127.0.0.1 with its storage in a temporary directory."""

    host: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{self.host}"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    program = require_tool("docker-registry")
    port = free_port()
    root = tmp_path / "registry"
    root.mkdir()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (tmp_path / "registry.log").open("wb")
    process = subprocess.Popen([program, "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + REGISTRY_START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"docker-registry did not start: {(tmp_path / 'registry.log').read_text()}"
                    ) from None
                time.sleep(0.05)
        yield Registry(f"127.0.0.1:{port}", process)
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process this test started, by its PID: SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_layer(size: int, seed: int) -> bytes:
    """Return a gzipped tar with one file of ``size`` pseudo-random (incompressible) bytes."""
    content = hashlib.shake_256(seed.to_bytes(8, "big")).digest(size) if size else b""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo(f"data-{seed}.bin")
        info.size = len(content)
        info.mtime = 0
        archive.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)


def make_image(layout: Path, tag: str, layer_sizes: list[int], seed: int = 0) -> str:
    """Write a linux/amd64 OCI image into the layout ``layout``; returns its manifest digest."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layers = []
    diff_ids = []
    for number, size in enumerate(layer_sizes):
        data = make_layer(size, seed * 1000 + number)
        diff_ids.append("sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest())
        layers.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(layout, data)}
        )
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/data-0.bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_descriptor = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **_blob(layout, json.dumps(config).encode()),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_descriptor,
        "layers": layers,
    }
    manifest_descriptor = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **_blob(layout, json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    index_path = layout / "index.json"
    index: dict[str, Any] = (
        json.loads(index_path.read_text())
        if index_path.exists()
        else {
            "schemaVersion": 2,
            "manifests": [],
        }
    )
    index["manifests"].append(manifest_descriptor)
    index_path.write_text(json.dumps(index))
    return str(manifest_descriptor["digest"])


def skopeo(*arguments: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run skopeo; fail the test with its stderr when it exits non-zero."""
    program = require_tool("skopeo")
    result = subprocess.run(
        [program, "--insecure-policy", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"skopeo {' '.join(arguments)} failed: {result.stderr}")
    return result


def push(layout: Path, tag: str, registry: Registry, repository: str) -> None:
    """Copy ``layout:tag`` to the registry unchanged (digests preserved)."""
    skopeo(
        "copy",
        "--preserve-digests",
        "--all",
        "--dest-tls-verify=false",
        f"oci:{layout}:{tag}",
        f"docker://{registry.host}/{repository}:{tag}",
    )


def tree_digests(directory: Path) -> dict[str, str]:
    """Map each file under ``directory`` (relative path) to the SHA-256 of its bytes."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }

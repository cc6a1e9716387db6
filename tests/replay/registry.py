"""A real ``docker-registry`` on 127.0.0.1 holding one generated image, for calibrate tests."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import require_tool
from warmstart import LayerStore

START_TIMEOUT_S = 30.0

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
"""

LAYER = "application/vnd.oci.image.layer.v1.tar"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_registry(work_dir: Path) -> Iterator[str]:
    """Start ``docker-registry`` on a free loopback port; yield ``127.0.0.1:PORT``; stop it
    by its process id."""
    binary = require_tool("docker-registry")
    port = free_port()
    config = work_dir / "registry.yml"
    config.write_text(CONFIG.format(root=work_dir / "storage", port=port))
    log = (work_dir / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"docker-registry did not start: {(work_dir / 'registry.log').read_text()}"
                    ) from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def push_image(host: str, repository: str, layer_sizes: Sequence[int], work_dir: Path) -> str:
    """Push an image of random layers of ``layer_sizes`` bytes with skopeo; return its reference."""
    skopeo = require_tool("skopeo")
    store = LayerStore(work_dir / "source-store")
    layers = []
    for size in layer_sizes:
        data = os.urandom(size)
        info = store.put(data)
        layers.append({"mediaType": LAYER, "digest": info.digest, "size": size})
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {
                "type": "layers",
                "diff_ids": [layer["digest"] for layer in layers],
            },
        }
    ).encode()
    config_info = store.put(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_info.digest,
                "size": len(config),
            },
            "layers": layers,
        }
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    store.put(manifest, digest=digest)
    store.tag("v1", digest)
    layout = work_dir / "layout"
    store.export_layout(layout, tags=["v1"])
    reference = f"{host}/{repository}:v1"
    subprocess.run(
        [
            skopeo,
            "--insecure-policy",
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{layout}:v1",
            f"docker://{reference}",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return reference

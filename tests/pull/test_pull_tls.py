"""HTTPS pulls from the real registry serving a certificate from a test CA."""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.pull.helpers import pull
from tests.registry.layout import build_image, tar_layer, write_layout
from tests.registry.network import free_port
from warmstart import LayerStore, errors

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
  tls:
    certificate: {certificate}
    key: {key}
"""


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """Create a CA and a server certificate for 127.0.0.1 signed by it; return ca, cert, key."""
    openssl = require_tool("openssl")
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, request, certificate = (
        directory / "server.key",
        directory / "server.csr",
        directory / "server.pem",
    )
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    commands = [
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-days",
            "1",
            "-subj",
            "/CN=warmstart test CA",
        ],
        [
            openssl,
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            request,
            "-subj",
            "/CN=127.0.0.1",
        ],
        [
            openssl,
            "x509",
            "-req",
            "-in",
            request,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            certificate,
            "-days",
            "1",
            "-extfile",
            extensions,
        ],
    ]
    for command in commands:
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    return ca, certificate, key


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A docker-registry serving HTTPS on 127.0.0.1; yields its host and the CA file."""
    binary = require_tool("docker-registry")
    ca, certificate, key = make_certificates(tmp_path)
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        CONFIG.format(root=tmp_path / "storage", port=port, certificate=certificate, key=key)
    )
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    context = ssl.create_default_context(cafile=str(ca))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"https://127.0.0.1:{port}/v2/", context=context, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        yield f"127.0.0.1:{port}", ca
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_pull_over_https_with_custom_ca(
    store: LayerStore, tls_registry: tuple[str, Path], tmp_path: Path
) -> None:
    skopeo = require_tool("skopeo")
    host, ca = tls_registry
    image = build_image([tar_layer({"hello.txt": b"over TLS"})])
    layout = write_layout(tmp_path / "layout", {"v1": image})
    certificates = tmp_path / "skopeo-certs"
    certificates.mkdir()
    (certificates / "ca.crt").write_bytes(ca.read_bytes())
    subprocess.run(
        [
            skopeo,
            "copy",
            "--dest-cert-dir",
            str(certificates),
            f"oci:{layout}:v1",
            f"docker://{host}/tls/app:v1",
        ],
        check=True,
        capture_output=True,
    )
    reference = f"{host}/tls/app:v1"

    with pytest.raises(errors.RegistryConnectionError) as caught:
        pull(store, reference, max_attempts=1)
    assert "certificate" in str(caught.value).lower()
    assert caught.value.url.startswith("https://")

    report = pull(LayerStore(store.root), reference, ca_certificates=[ca])
    assert report.manifest_digest == image.digest
    assert store.verify().ok

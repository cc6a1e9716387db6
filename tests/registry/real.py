"""The real registry fixture: the CNCF distribution server (``docker-registry``) on loopback.

``RealRegistry.start`` writes a config with filesystem storage in a temporary directory, delete
enabled and no auth, starts ``/usr/bin/docker-registry serve`` on 127.0.0.1 and a free port, and
waits until ``GET /v2/`` responds. Content gets in with skopeo (``push_layout``, ``push``) or with
the plain OCI push API (``put_blob``, ``put_manifest``) for cases skopeo would rewrite or reject.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.registry.layout import (
    INDEX_MEDIA_TYPES,
    REF_NAME,
    Content,
    build_artifact,
    build_image,
    build_index,
    digest_of,
    tar_layer,
    write_layout,
)
from tests.registry.network import LOOPBACK, free_port, wait_for_http

logger = logging.getLogger("tests.registry.real")

REGISTRY_BINARY = "docker-registry"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
SKOPEO_TIMEOUT_S = 600.0
# The server binds its port by number, so another process can take it after free_port() returns.
# A start that fails that way is retried on a new port this many times.
START_ATTEMPTS = 3

DEFAULT_PLATFORMS: tuple[Mapping[str, str], ...] = (
    {"architecture": "amd64", "os": "linux"},
    {"architecture": "arm64", "os": "linux", "variant": "v8"},
)

CONFIG_TEMPLATE = """\
version: 0.1
log:
  level: warn
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {address}
  headers:
    X-Content-Type-Options: [nosniff]
"""


@dataclass(frozen=True)
class HttpResponse:
    """Status, headers (lower-case names) and body of one plain HTTP exchange."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def http_request(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> HttpResponse:
    """Send one request with urllib and return the response, including 4xx and 5xx ones.

    Redirects are followed for GET and HEAD only, as urllib does by default.
    """
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return HttpResponse(
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as error:
        with error:
            return HttpResponse(
                error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()
            )


def skopeo_push(
    layout_dir: Path, tag_in_layout: str, destination: str, *, all_images: bool
) -> None:
    """Copy ``oci:layout_dir:tag_in_layout`` to ``docker://destination`` over plain HTTP.

    ``--preserve-digests`` makes skopeo fail instead of rewriting a manifest, so the digests in
    the layout are the digests in the registry. Raises ``RuntimeError`` with skopeo's output.
    """
    command = [
        "skopeo",
        "--insecure-policy",
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]
    if all_images:
        command.append("--all")
    command += [f"oci:{layout_dir}:{tag_in_layout}", f"docker://{destination}"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=SKOPEO_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"skopeo copy to {destination} failed with exit code {result.returncode}: "
            f"{result.stderr.strip()}"
        )


def layout_entry(layout_dir: Path, tag: str) -> dict[str, Any]:
    """Return the ``index.json`` descriptor tagged ``tag`` in an OCI layout.

    Raises ``KeyError`` naming the tag and the layout when no entry carries that tag.
    """
    index = json.loads((layout_dir / "index.json").read_text())
    for entry in index.get("manifests") or []:
        if entry.get("annotations", {}).get(REF_NAME) == tag:
            return dict(entry)
    raise KeyError(f"tag {tag!r} not found in {layout_dir / 'index.json'}")


class RealRegistry:
    """A running ``docker-registry`` process on 127.0.0.1 with its own storage directory.

    Use ``RealRegistry.start(work_dir)`` and ``stop()``, or the ``real_registry`` fixture.
    ``host`` is ``127.0.0.1:PORT`` and ``url`` is ``http://127.0.0.1:PORT``.
    """

    def __init__(self, process: subprocess.Popen[bytes], port: int, work_dir: Path) -> None:
        self.process = process
        self.port = port
        self.host = f"{LOOPBACK}:{port}"
        self.url = f"http://{self.host}"
        self.work_dir = work_dir
        self.storage_dir = work_dir / "storage"
        self.log_path = work_dir / "registry.log"

    @classmethod
    def start(cls, work_dir: Path) -> RealRegistry:
        """Start a registry that keeps its config, storage and log under ``work_dir``.

        Raises ``RuntimeError`` with the end of the server log when it exits during start-up,
        and ``TimeoutError`` when ``GET /v2/`` gets no response within 30 s.
        """
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None:
            raise FileNotFoundError(f"{REGISTRY_BINARY} not found on PATH; apt-get install it")
        work_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_port()
            config_path = work_dir / "config.yml"
            storage = work_dir / "storage"
            storage.mkdir(exist_ok=True)
            config_path.write_text(
                CONFIG_TEMPLATE.format(root=storage, address=f"{LOOPBACK}:{port}")
            )
            log = (work_dir / "registry.log").open("ab")
            process = subprocess.Popen(
                [binary, "serve", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            registry = cls(process, port, work_dir)
            try:
                wait_for_http(f"{registry.url}/v2/", START_TIMEOUT_S, alive=registry.check_alive)
            except RuntimeError:
                registry.stop()
                if attempt == START_ATTEMPTS or "address already in use" not in registry.log():
                    raise
                logger.warning("port %d was taken before the registry bound it; retrying", port)
                continue
            except BaseException:
                registry.stop()
                raise
            logger.info("registry started at %s (pid %d)", registry.url, process.pid)
            return registry
        raise AssertionError("unreachable: the last attempt returns or raises")

    def log(self) -> str:
        """Return the server's log output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def check_alive(self) -> None:
        """Raise ``RuntimeError`` with the end of the log when the server process has exited."""
        code = self.process.poll()
        if code is not None:
            tail = "\n".join(self.log().splitlines()[-20:])
            raise RuntimeError(f"docker-registry exited with code {code}:\n{tail}")

    def stop(self) -> None:
        """Stop the server by its PID: SIGTERM, then SIGKILL after 10 s."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("registry pid %d ignored SIGTERM; killing it", self.process.pid)
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)

    # URLs and plain HTTP access.

    def blob_url(self, repo: str, digest: str) -> str:
        return f"{self.url}/v2/{repo}/blobs/{digest}"

    def manifest_url(self, repo: str, reference: str) -> str:
        return f"{self.url}/v2/{repo}/manifests/{reference}"

    def put_blob(self, repo: str, data: bytes, digest: str | None = None) -> HttpResponse:
        """Upload ``data`` with a monolithic upload (POST, then PUT with ``?digest=``).

        ``digest`` defaults to the sha256 of ``data``; pass another to test how the registry
        treats it. Returns the response to the PUT (201 when the registry accepted the blob).
        Raises ``RuntimeError`` when the registry does not open an upload session.
        """
        digest = digest or digest_of(data)
        opened = http_request("POST", f"{self.url}/v2/{repo}/blobs/uploads/")
        if opened.status != 202:
            raise RuntimeError(
                f"POST /v2/{repo}/blobs/uploads/ returned {opened.status}: {opened.body[:200]!r}"
            )
        location = opened.headers["location"]
        if location.startswith("/"):
            location = self.url + location
        separator = "&" if "?" in location else "?"
        return http_request(
            "PUT",
            f"{location}{separator}digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> HttpResponse:
        """PUT a manifest or index as it is, without the rewriting a copy tool may do."""
        return http_request(
            "PUT",
            self.manifest_url(repo, reference),
            data=data,
            headers={"Content-Type": media_type},
        )

    def put_content(self, repo: str, tag: str, content: Content) -> None:
        """Upload every blob of ``content`` and then its manifests (children first) by HTTP.

        Raises ``RuntimeError`` naming the digest of any blob or manifest the registry rejects.
        """
        manifests = content.manifest_media_types()
        for digest, data in content.blobs.items():
            if digest in manifests:
                continue
            response = self.put_blob(repo, data, digest)
            if response.status != 201:
                raise RuntimeError(
                    f"blob {digest} rejected with {response.status}: {response.body!r}"
                )
        for child in content.children:
            self.put_content(repo, child.digest, child)
        response = self.put_manifest(repo, tag, content.manifest, content.media_type)
        if response.status != 201:
            raise RuntimeError(
                f"manifest {content.digest} rejected with {response.status}: {response.body!r}"
            )

    # Pushing with skopeo.

    def push_layout(self, layout_dir: Path, tag_in_layout: str, repo: str, tag: str) -> str:
        """Push one tag of an OCI layout with skopeo and return its manifest digest.

        An index is copied with ``--all``, so every platform and attestation manifest arrives.
        """
        entry = layout_entry(layout_dir, tag_in_layout)
        skopeo_push(
            layout_dir,
            tag_in_layout,
            f"{self.host}/{repo}:{tag}",
            all_images=entry["mediaType"] in INDEX_MEDIA_TYPES,
        )
        return str(entry["digest"])

    def push(self, repo: str, tag: str, content: Content) -> Content:
        """Write ``content`` as a layout in a temporary directory and push it with skopeo."""
        with tempfile.TemporaryDirectory(dir=self.work_dir, prefix="layout-") as directory:
            layout = write_layout(Path(directory), {tag: content})
            self.push_layout(layout, tag, repo, tag)
        return content

    def push_generated(
        self, repo: str, tag: str, layers: Sequence[bytes], **image_options: Any
    ) -> Content:
        """Build an image from uncompressed ``layers`` (see ``build_image``) and push it.

        ``image_options`` go to ``build_image``: ``compress=False`` keeps layers uncompressed,
        ``architecture``, ``os``, ``layer_media_type`` and ``annotations`` set those fields.
        """
        return self.push(repo, tag, build_image(layers, **image_options))

    def push_index(
        self,
        repo: str,
        tag: str,
        platforms: Sequence[Mapping[str, str]] = DEFAULT_PLATFORMS,
        *,
        attestations: bool = True,
    ) -> Content:
        """Push an OCI index with one small image per platform and, by default, attestations.

        Each image has a layer shared by all platforms and one naming its platform. Attestation
        manifests are listed with platform ``unknown/unknown``.
        """
        shared = tar_layer({"etc/os-release": b"ID=warmstart-test\n"})
        images = []
        for platform in platforms:
            name = "-".join(
                platform[key] for key in ("os", "architecture", "variant") if key in platform
            )
            own = tar_layer({"platform.txt": name.encode()})
            image = build_image(
                [shared, own], architecture=platform["architecture"], os=platform["os"]
            )
            images.append((platform, image))
        return self.push(repo, tag, build_index(images, attestations=attestations))

    def push_artifact(
        self, repo: str, tag: str, files: Sequence[tuple[str, bytes]], **artifact_options: str
    ) -> Content:
        """Push an OCI artifact (custom ``artifactType`` and layer media type, empty config).

        ``artifact_options`` go to ``build_artifact`` (``artifact_type``, ``layer_media_type``).
        """
        return self.push(repo, tag, build_artifact(files, **artifact_options))


class RegistryRepository:
    """One repository in a ``RealRegistry``, named for the test that uses it.

    Methods are those of ``RealRegistry`` without the ``repo`` argument.
    """

    def __init__(self, registry: RealRegistry, name: str) -> None:
        self.registry = registry
        self.name = name
        self.host = registry.host
        self.url = registry.url
        self.reference_prefix = f"{registry.host}/{name}"

    def blob_url(self, digest: str) -> str:
        return self.registry.blob_url(self.name, digest)

    def manifest_url(self, reference: str) -> str:
        return self.registry.manifest_url(self.name, reference)

    def push_layout(self, layout_dir: Path, tag_in_layout: str, tag: str) -> str:
        return self.registry.push_layout(layout_dir, tag_in_layout, self.name, tag)

    def push(self, tag: str, content: Content) -> Content:
        return self.registry.push(self.name, tag, content)

    def push_generated(self, tag: str, layers: Sequence[bytes], **image_options: Any) -> Content:
        return self.registry.push_generated(self.name, tag, layers, **image_options)

    def push_index(
        self,
        tag: str,
        platforms: Sequence[Mapping[str, str]] = DEFAULT_PLATFORMS,
        *,
        attestations: bool = True,
    ) -> Content:
        return self.registry.push_index(self.name, tag, platforms, attestations=attestations)

    def push_artifact(
        self, tag: str, files: Sequence[tuple[str, bytes]], **artifact_options: str
    ) -> Content:
        return self.registry.push_artifact(self.name, tag, files, **artifact_options)

    def put_blob(self, data: bytes, digest: str | None = None) -> HttpResponse:
        return self.registry.put_blob(self.name, data, digest)

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> HttpResponse:
        return self.registry.put_manifest(self.name, reference, data, media_type)

    def put_content(self, tag: str, content: Content) -> None:
        self.registry.put_content(self.name, tag, content)


def repository_name(test_name: str, serial: int) -> str:
    """Return a valid repository name (lower case, ``[a-z0-9._-]``) derived from a test name."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:60] or "test"
    return f"tests/{cleaned}-{serial}"

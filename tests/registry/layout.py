"""Build OCI images, indexes and artifacts in memory and write them as OCI image layouts.

The builders produce real content: gzip-compressed tar layers, an image config whose
``rootfs.diff_ids`` are the sha256 digests of the uncompressed layers, and manifests that
reference every blob by digest and size. The same objects feed the real registry (written as a
layout and pushed with skopeo), the fake registry (served from memory) and the benchmark images.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IN_TOTO = "application/vnd.in-toto+json"
REF_NAME = "org.opencontainers.image.ref.name"

INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST, *INDEX_MEDIA_TYPES})

# A fixed timestamp keeps generated layers byte-identical from run to run.
EPOCH = 1_700_000_000


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """Return the OCI digest string (``algorithm:hex``) of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` the way the manifests here are stored: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def tar_layer(files: Mapping[str, bytes]) -> bytes:
    """Return an uncompressed tar archive holding ``files`` (path to content) in sorted order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = EPOCH
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


def gzip_bytes(data: bytes, level: int = 6) -> bytes:
    """Compress ``data`` as one gzip member with a zero mtime, so the output is reproducible."""
    return gzip.compress(data, compresslevel=level, mtime=0)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: media type, digest and size of one blob."""

    media_type: str
    digest: str
    size: int
    platform: Mapping[str, str] | None = None
    annotations: Mapping[str, str] | None = None
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the descriptor as it appears inside a manifest or index."""
        value: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            value["platform"] = dict(self.platform)
        if self.annotations:
            value["annotations"] = dict(self.annotations)
        if self.artifact_type is not None:
            value["artifactType"] = self.artifact_type
        return value


@dataclass
class Content:
    """A manifest or index together with every blob it reaches, keyed by digest.

    ``blobs`` includes the manifest itself and, for an index, every child manifest, so writing
    ``blobs`` into ``blobs/sha256/`` gives a complete layout for this content.
    """

    media_type: str
    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)
    layers: list[Descriptor] = field(default_factory=list)
    config: Descriptor | None = None
    children: list[Content] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def size(self) -> int:
        return len(self.manifest)

    def descriptor(self, **extra: Any) -> Descriptor:
        """Return a descriptor of this manifest; ``extra`` sets platform or annotations."""
        return Descriptor(self.media_type, self.digest, self.size, **extra)

    def manifest_media_types(self) -> dict[str, str]:
        """Return the media type of this manifest and of every child manifest, by digest."""
        types = {self.digest: self.media_type}
        for child in self.children:
            types.update(child.manifest_media_types())
        return types


def _add_blob(blobs: dict[str, bytes], media_type: str, data: bytes) -> Descriptor:
    digest = digest_of(data)
    blobs[digest] = data
    return Descriptor(media_type, digest, len(data))


def build_image(
    layers: Sequence[bytes],
    *,
    compress: bool = True,
    architecture: str = "amd64",
    os: str = "linux",
    layer_media_type: str | None = None,
    annotations: Mapping[str, str] | None = None,
    gzip_level: int = 6,
) -> Content:
    """Build an OCI image manifest from uncompressed layers (normally tar archives).

    Each layer is gzip-compressed unless ``compress`` is false, in which case the bytes are used
    as they are with the uncompressed tar media type (this is how a zero-byte layer blob is made).
    The config's ``rootfs.diff_ids`` hold the sha256 of each uncompressed layer, in order, so the
    same layer listed twice appears twice there as well.
    """
    blobs: dict[str, bytes] = {}
    descriptors: list[Descriptor] = []
    diff_ids: list[str] = []
    for layer in layers:
        diff_ids.append(digest_of(layer))
        data = gzip_bytes(layer, gzip_level) if compress else layer
        media_type = layer_media_type or (OCI_LAYER_GZIP if compress else OCI_LAYER_TAR)
        descriptors.append(_add_blob(blobs, media_type, data))
    config = {
        "architecture": architecture,
        "os": os,
        "created": "2023-11-14T22:13:20Z",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "warmstart tests"}]
        * len(layers),
    }
    config_descriptor = _add_blob(blobs, OCI_CONFIG, canonical_json(config))
    return _manifest(blobs, config_descriptor, descriptors, annotations=annotations)


def build_artifact(
    files: Sequence[tuple[str, bytes]],
    *,
    artifact_type: str = "application/vnd.warmstart.model.v1",
    layer_media_type: str = "application/vnd.warmstart.model.weights.v1.safetensors",
) -> Content:
    """Build an OCI artifact manifest: an empty config and one layer per ``(title, bytes)``.

    This follows the OCI image spec 1.1 artifact guidance: ``artifactType`` is set, the config is
    the empty descriptor (``{}``), and layers carry a custom media type and a title annotation.
    """
    blobs: dict[str, bytes] = {}
    descriptors = []
    for title, data in files:
        plain = _add_blob(blobs, layer_media_type, data)
        descriptors.append(
            Descriptor(
                plain.media_type,
                plain.digest,
                plain.size,
                annotations={"org.opencontainers.image.title": title},
            )
        )
    config_descriptor = _add_blob(blobs, OCI_EMPTY, b"{}")
    return _manifest(blobs, config_descriptor, descriptors, artifact_type=artifact_type)


def _manifest(
    blobs: dict[str, bytes],
    config: Descriptor,
    layers: list[Descriptor],
    *,
    artifact_type: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Content:
    value: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    if artifact_type is not None:
        value["artifactType"] = artifact_type
    if annotations:
        value["annotations"] = dict(annotations)
    manifest = canonical_json(value)
    blobs[digest_of(manifest)] = manifest
    return Content(OCI_MANIFEST, manifest, blobs, layers=layers, config=config)


def build_attestation(subject: Content) -> Content:
    """Build a BuildKit-style attestation manifest for ``subject``: one in-toto layer.

    In an index it is listed with platform ``unknown/unknown`` and the annotations
    ``vnd.docker.reference.type: attestation-manifest`` and ``vnd.docker.reference.digest``.
    """
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{"name": "image", "digest": {"sha256": subject.digest.split(":", 1)[1]}}],
        "predicate": {"spdxVersion": "SPDX-2.3", "name": "warmstart-test"},
    }
    blobs: dict[str, bytes] = {}
    layer = _add_blob(blobs, IN_TOTO, canonical_json(statement))
    layer = Descriptor(
        layer.media_type,
        layer.digest,
        layer.size,
        annotations={"in-toto.io/predicate-type": "https://spdx.dev/Document"},
    )
    config = {
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }
    config_descriptor = _add_blob(blobs, OCI_CONFIG, canonical_json(config))
    return _manifest(blobs, config_descriptor, [layer])


def build_index(
    images: Iterable[tuple[Mapping[str, str], Content]],
    *,
    attestations: bool = False,
) -> Content:
    """Build an OCI index of ``(platform, image)`` pairs.

    With ``attestations`` every image gets an attestation manifest listed after the images with
    platform ``unknown/unknown``, as ``docker buildx`` writes them.
    """
    blobs: dict[str, bytes] = {}
    entries: list[Descriptor] = []
    children: list[Content] = []
    pairs = list(images)
    for platform, image in pairs:
        blobs.update(image.blobs)
        entries.append(image.descriptor(platform=platform))
        children.append(image)
    if attestations:
        for _, image in pairs:
            attestation = build_attestation(image)
            blobs.update(attestation.blobs)
            children.append(attestation)
            entries.append(
                attestation.descriptor(
                    platform={"architecture": "unknown", "os": "unknown"},
                    annotations={
                        "vnd.docker.reference.type": "attestation-manifest",
                        "vnd.docker.reference.digest": image.digest,
                    },
                )
            )
    value = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [entry.to_json() for entry in entries],
    }
    manifest = canonical_json(value)
    blobs[digest_of(manifest)] = manifest
    return Content(OCI_INDEX, manifest, blobs, children=children)


def write_layout(root: Path, tagged: Mapping[str, Content]) -> Path:
    """Write ``tagged`` (tag to content) as an OCI image layout at ``root`` and return ``root``.

    Blobs are written under ``blobs/<algorithm>/<hex>``; ``index.json`` lists each tag with the
    ``org.opencontainers.image.ref.name`` annotation. An existing layout at ``root`` is replaced.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entries = []
    for tag, content in tagged.items():
        for digest, data in content.blobs.items():
            algorithm, hex_digest = digest.split(":", 1)
            path = root / "blobs" / algorithm / hex_digest
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_bytes(data)
        entries.append(content.descriptor(annotations={REF_NAME: tag}).to_json())
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    (root / "index.json").write_text(json.dumps(index, indent=2))
    return root

"""Pieces of the OCI distribution protocol the mirror serves: names, error bodies, media types."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

__all__ = [
    "API_VERSION_HEADER",
    "MANIFEST_MEDIA_TYPES",
    "error_response",
    "index_entries",
    "manifest_blobs",
    "manifest_media_type",
    "valid_repository",
    "valid_tag",
]

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"
MANIFEST_MEDIA_TYPES = frozenset(
    {OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, OCI_ARTIFACT}
)
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})

# The grammar of the OCI distribution specification (v1.1), "Pulling manifests".
_REPOSITORY = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
MAX_REPOSITORY_LENGTH = 255


def valid_repository(name: str) -> bool:
    """Check a repository name against the OCI grammar and length limit."""
    return len(name) <= MAX_REPOSITORY_LENGTH and _REPOSITORY.fullmatch(name) is not None


def valid_tag(tag: str) -> bool:
    """Check a tag against the OCI grammar (at most 128 characters)."""
    return _TAG.fullmatch(tag) is not None


def error_response(status: int, code: str, message: str, detail: Any = None) -> web.Response:
    """Build a response with the OCI error envelope ``{"errors": [{code, message, detail}]}``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return web.json_response({"errors": [error]}, status=status, headers=API_VERSION_HEADER)


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def manifest_media_type(body: bytes) -> str | None:
    """Return the media type of a manifest or index, or None when ``body`` is not one.

    The ``mediaType`` field wins. Without it (it is optional in OCI manifests), an object with
    ``manifests`` is an OCI index and one with ``config`` or ``layers`` an OCI image manifest.
    """
    value = _parse(body)
    if value is None or value.get("schemaVersion") != 2:
        return None
    media_type = value.get("mediaType")
    if isinstance(media_type, str):
        return media_type if media_type in MANIFEST_MEDIA_TYPES else None
    if "manifests" in value:
        return OCI_INDEX
    if "config" in value or "layers" in value:
        return OCI_MANIFEST
    return None


def manifest_blobs(body: bytes) -> list[tuple[str, int]]:
    """List ``(digest, size)`` of the config, layers and artifact blobs an image manifest lists.

    Foreign layers (descriptors with ``urls``) are left out because registries do not serve them.
    Returns an empty list for an index or for JSON that is not a manifest.
    """
    value = _parse(body)
    if value is None:
        return []
    descriptors: list[Any] = []
    if isinstance(value.get("config"), dict):
        descriptors.append(value["config"])
    for key in ("layers", "blobs"):
        items = value.get(key)
        if isinstance(items, list):
            descriptors.extend(items)
    blobs = []
    for descriptor in descriptors:
        if not isinstance(descriptor, dict) or descriptor.get("urls"):
            continue
        digest, size = descriptor.get("digest"), descriptor.get("size")
        if isinstance(digest, str) and isinstance(size, int) and size >= 0:
            blobs.append((digest, size))
    return blobs


def index_entries(body: bytes) -> list[str]:
    """List the manifest digests an index lists in ``manifests``; empty for anything else."""
    value = _parse(body)
    items = value.get("manifests") if value is not None else None
    if not isinstance(items, list):
        return []
    return [
        item["digest"]
        for item in items
        if isinstance(item, dict) and isinstance(item.get("digest"), str)
    ]

"""The pull-through cache: what the mirror fetches from its upstream registry, and when.

Blobs and manifests requested by digest are immutable, so once they are in the store they are
served from it for good. Tags move, so a tag is resolved again upstream once its cached digest
is older than ``tag_ttl_s``. When the upstream cannot be reached, the last known digest is
served instead (stale-if-error), from memory or from the store's ``index.json``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from warmstart import BlobReport, ManifestReport
from warmstart.errors import (
    MissingBlobError,
    RegistryConnectionError,
    RegistryError,
    RegistryTimeoutError,
    TagNotFoundError,
)
from warmstart.mirror.flight import SingleFlight
from warmstart.mirror.lru import LruDict
from warmstart.mirror.protocol import INDEX_MEDIA_TYPES, manifest_blobs
from warmstart.store import LayerStore

__all__ = ["Resolved", "Upstream", "UpstreamCache"]

logger = logging.getLogger("warmstart.mirror")

# Size hints remembered from served manifests, so a blob fetch needs no HEAD request first.
MAX_SIZE_HINTS = 65536
# Resolved tags kept in memory. A tag evicted from them is resolved upstream again on its next
# request, and while the upstream is down its last digest comes from the store's index.json.
MAX_RESOLVED_TAGS = 16384
# Media types that upstream sent with fetched manifests. Without one, the mirror serves the
# media type that the manifest body declares.
MAX_MEDIA_TYPES = 65536


@dataclass(frozen=True)
class Upstream:
    """A registry the mirror pulls through to.

    ``registry`` is ``host[:port]`` as written in image references (``docker.io`` for Docker
    Hub). ``insecure`` selects plain HTTP; loopback registries use it unless they answer TLS.
    """

    registry: str
    insecure: bool = False
    ca_certificates: tuple[Path, ...] = field(default=())

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """Parse ``http://host:port``, ``https://host`` or a bare ``host[:port]`` (HTTPS).

        Raises ``ValueError`` for another scheme or a URL with a path.
        """
        scheme, separator, rest = text.partition("://")
        if not separator:
            scheme, rest = "https", text
        if scheme not in ("http", "https"):
            raise ValueError(f"invalid upstream {text!r}: use http:// or https://")
        registry = rest.rstrip("/")
        if not registry or "/" in registry:
            raise ValueError(f"invalid upstream {text!r}: give a registry URL without a path")
        if registry in ("registry-1.docker.io", "index.docker.io"):
            registry = "docker.io"
        return cls(registry, insecure=scheme == "http")

    def reference(self, repository: str, tag_or_digest: str) -> str:
        """Return the image reference of ``repository`` at a tag or ``@digest``."""
        separator = "@" if ":" in tag_or_digest else ":"
        return f"{self.registry}/{repository}{separator}{tag_or_digest}"


@dataclass(frozen=True)
class Resolved:
    """A tag resolved to a manifest: its digest, media type, and whether it came from upstream."""

    digest: str
    media_type: str | None
    fresh: bool


def _unreachable(error: RegistryError) -> bool:
    """True for failures where serving a stale tag beats failing: no response or a 5xx."""
    if isinstance(error, RegistryConnectionError | RegistryTimeoutError):
        return True
    return error.status is not None and error.status >= 500


class UpstreamCache:
    """Fetches manifests and blobs from one upstream into the store, once per key at a time.

    ``clock`` returns seconds and only measures tag ages (``time.monotonic`` by default).
    ``connections`` and ``chunk_size`` (bytes) go to the chunked puller.
    """

    def __init__(
        self,
        store: LayerStore,
        upstream: Upstream,
        *,
        tag_ttl_s: float = 60.0,
        connections: int = 8,
        chunk_size: int = 16 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if tag_ttl_s < 0:
            raise ValueError(f"tag_ttl_s must be at least 0 seconds, got {tag_ttl_s!r}")
        self.store = store
        self.upstream = upstream
        self.tag_ttl_s = tag_ttl_s
        self.connections = connections
        self.chunk_size = chunk_size
        self.clock = clock
        self._tags: LruDict[tuple[str, str], tuple[Resolved, float]] = LruDict(MAX_RESOLVED_TAGS)
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._media_types: LruDict[str, str] = LruDict(MAX_MEDIA_TYPES)
        self._manifests: SingleFlight[ManifestReport] = SingleFlight()
        self._blobs: SingleFlight[BlobReport] = SingleFlight()
        self.upstream_manifest_requests = 0
        self.upstream_blob_fetches = 0

    def _client_options(self) -> dict[str, object]:
        return {
            "insecure_registries": [self.upstream.registry] if self.upstream.insecure else [],
            "ca_certificates": list(self.upstream.ca_certificates),
        }

    def store_tag(self, repository: str, tag: str) -> str:
        """Return the store tag under which a complete image of ``repository:tag`` is kept."""
        return self.upstream.reference(repository, tag)

    def media_type(self, digest: str) -> str | None:
        """Return the media type upstream sent for a manifest digest, if it was fetched here."""
        return self._media_types.get(digest)

    def remember_sizes(self, manifest: bytes) -> list[tuple[str, int]]:
        """Record the blob sizes an image manifest lists; returns them."""
        blobs = manifest_blobs(manifest)
        for digest, size in blobs:
            self._sizes[digest] = size
            self._sizes.move_to_end(digest)
        while len(self._sizes) > MAX_SIZE_HINTS:
            self._sizes.popitem(last=False)
        return blobs

    async def fetch_manifest(self, repository: str, tag_or_digest: str) -> ManifestReport:
        """Fetch a manifest by tag or digest into the store (not tagged there)."""
        reference = self.upstream.reference(repository, tag_or_digest)

        async def work() -> ManifestReport:
            self.upstream_manifest_requests += 1
            report = await self.store.pull_manifest(reference, **self._client_options())
            self._media_types[report.digest] = report.media_type
            logger.info("fetched manifest %s (%s)", reference, report.digest)
            return report

        return await self._manifests.run(reference, work)

    async def resolve_tag(self, repository: str, tag: str) -> Resolved:
        """Resolve ``repository:tag`` to a manifest digest, fetching the manifest when stale.

        Raises ``RegistryError`` when the upstream fails and no earlier digest is known, and
        ``RegistryNotFoundError`` when the upstream says the tag does not exist.
        """
        key = (repository, tag)
        cached = self._tags.get(key)
        now = self.clock()
        if cached is not None and now - cached[1] < self.tag_ttl_s:
            return cached[0]
        try:
            report = await self.fetch_manifest(repository, tag)
        except RegistryError as error:
            fallback = cached[0] if cached is not None else self._stored_tag(repository, tag)
            if fallback is None or not _unreachable(error):
                self._tags.pop(key)
                raise
            logger.warning(
                "upstream %s failed for %s:%s, serving the last known digest %s: %s",
                self.upstream.registry,
                repository,
                tag,
                fallback.digest,
                error,
            )
            return Resolved(fallback.digest, fallback.media_type, fresh=False)
        resolved = Resolved(report.digest, report.media_type, fresh=True)
        self._tags[key] = (resolved, now)
        return resolved

    def _stored_tag(self, repository: str, tag: str) -> Resolved | None:
        try:
            descriptor = self.store.resolve(self.store_tag(repository, tag))
        except TagNotFoundError:
            return None
        return Resolved(descriptor.digest, descriptor.media_type, fresh=False)

    async def fetch_blob(self, repository: str, digest: str) -> BlobReport:
        """Fetch one blob into the store unless it is there; one download per digest at a time.

        Other processes that fetch the same digest into the same store wait on the store's lock
        file, so the bytes cross the network once.
        """
        reference = self.upstream.reference(repository, "latest")
        size = self._sizes.get(digest)

        async def work() -> BlobReport:
            self.upstream_blob_fetches += 1
            report = await self.store.pull_blob(
                reference,
                digest=digest,
                size=size,
                connections=self.connections,
                chunk_size=self.chunk_size,
                **self._client_options(),
            )
            if not report.reused:
                logger.info(
                    "fetched blob %s from %s/%s: %d bytes in %.2f s",
                    digest,
                    self.upstream.registry,
                    repository,
                    report.fetched_bytes,
                    report.seconds,
                )
            return report

        return await self._blobs.run(digest, work)

    async def warm_image(
        self, repository: str, digest: str, manifest: bytes, tag: str | None
    ) -> None:
        """Fetch every blob an image manifest lists, then tag it in the store when ``tag`` is set.

        An index is not warmed because the platform the client wants is not known yet; it is
        tagged with ``tag_index``. The client's next request, for the platform's manifest by
        digest, warms that manifest.
        """
        blobs = self.remember_sizes(manifest)
        if not blobs:
            return
        await asyncio.gather(*(self.fetch_blob(repository, blob) for blob, _ in blobs))
        if tag is not None:
            await self.tag_image(repository, digest, tag)

    async def tag_image(self, repository: str, digest: str, tag: str) -> None:
        """Tag the image manifest ``digest`` in the store as the image of ``repository:tag``.

        Raises ``MissingBlobError`` when a blob it lists is not in the store.
        """
        await asyncio.to_thread(self.store.tag, self.store_tag(repository, tag), digest)
        logger.info("cached %s as %s", self.store_tag(repository, tag), digest)

    async def tag_index(self, repository: str, digest: str, tag: str) -> bool:
        """Tag the index ``digest`` in the store as the image of ``repository:tag``.

        The platforms that no client pulled may be absent. A platform manifest that is in the
        store while its blobs are still arriving makes the store reject the tag
        (``MissingBlobError``). Then this logs and returns False, and the warm-up of that
        platform calls it again once the platform is complete. Returns whether the tag was
        written or already pointed at ``digest``.
        """
        store_tag = self.store_tag(repository, tag)
        try:
            current = await asyncio.to_thread(self.store.resolve, store_tag)
        except TagNotFoundError:
            current = None
        if current is not None and current.digest == digest:
            return True
        try:
            await asyncio.to_thread(self.store.tag, store_tag, digest)
        except MissingBlobError as error:
            logger.info("not tagging %s as %s yet: %s", store_tag, digest, error)
            return False
        logger.info("cached index %s as %s", store_tag, digest)
        return True

    def is_index(self, media_type: str | None) -> bool:
        return media_type in INDEX_MEDIA_TYPES

    async def close(self) -> None:
        """Cancel running fetches; their partial files stay in the store for a resume."""
        await self._manifests.close()
        await self._blobs.close()

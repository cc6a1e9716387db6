"""The mirror's HTTP side: a read-only OCI distribution API over a layer store.

Routes (OCI distribution specification v1.1, pull side only):

- ``GET /v2/``: API version check.
- ``GET|HEAD /v2/<name>/manifests/<tag or digest>``
- ``GET|HEAD /v2/<name>/blobs/<digest>``: single byte ranges, sent from the blob file with
  ``sendfile`` (aiohttp's ``FileResponse``).
- ``GET /v2/<name>/tags/list``: tags kept in the store for ``<name>``.
- ``POST /_warmstart/prefetch``: pull whole images of a configured upstream into the store.

Pushes and deletes get 405 ``UNSUPPORTED``. With a token, every request must carry
``Authorization: Bearer <token>`` or gets 401 ``UNAUTHORIZED``.

Requests may carry ``?ns=<registry>``, which containerd adds when it goes through a mirror. It
picks the upstream to pull through to, and a registry that is not configured is served from the
store only.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from warmstart._native import parse_digest_string
from warmstart.errors import (
    DigestMismatchError,
    InvalidDigestError,
    RegistryError,
    RegistryNotFoundError,
    SizeMismatchError,
    StoreError,
    TagNotFoundError,
)
from warmstart.mirror.lru import LruDict
from warmstart.mirror.protocol import (
    API_VERSION_HEADER,
    error_response,
    index_entries,
    manifest_media_type,
    valid_repository,
    valid_tag,
)
from warmstart.mirror.upstream import Upstream, UpstreamCache
from warmstart.store import LayerStore

__all__ = ["Mirror"]

logger = logging.getLogger("warmstart.mirror")

# Manifests larger than this are rejected by registries too (distribution uses 4 MiB).
MAX_MANIFEST_BYTES = 4 << 20
# Entries kept, per map, of the tags through which manifests were resolved and of the indexes
# that list a platform manifest. An entry is read within a pull: the tag when the client reads
# the manifest the tag named, the index when it reads a platform manifest that the index lists.
# Pulls that resolve more manifests than this in between lose the entry, and then the image or
# index is served and warmed but not tagged in the store. An entry takes a few hundred bytes.
MAX_TRACKED_MANIFESTS = 16384


@dataclass(frozen=True)
class _IndexTag:
    """An index served for ``repository:tag``, recorded for each of its platform manifests."""

    repository: str
    digest: str
    tag: str


@dataclass
class _Untagged:
    """An image manifest read with warming off, tagged once the blobs in ``missing`` are stored.

    ``tag`` is the tag through which the image was read and ``index`` the index that lists it;
    either may be None, not both.
    """

    cache: UpstreamCache
    repository: str
    digest: str
    tag: str | None
    index: _IndexTag | None
    missing: set[str]


class Mirror:
    """A read-only OCI registry over ``store`` that pulls through to ``upstreams`` on a miss.

    The first upstream is used for requests without ``?ns=``. With no upstream, the mirror
    serves only what is in the store. ``warm`` starts fetching every blob of an image manifest
    as soon as a client reads that manifest, so layers are already on their way when the client
    requests them. Once all its blobs are in, the image is tagged in the store. Without
    ``warm``, the mirror fetches only the blobs that clients request, and tags an image once
    those requests have brought every blob it lists into the store. An index read through a
    tag is tagged at once, with the platforms that clients pulled. ``tag_ttl_s`` is how long,
    in seconds, a tag resolved upstream is served without asking again, measured by
    ``clock``. Without upstreams, a tag ``T`` of repository ``N`` is looked up in the store as
    ``N:T``, then as the bare tag ``T`` (how ``warmstart store import`` names images).
    ``token``, when set, is the bearer token every request must present. The mirror keeps
    the tag of at most ``MAX_TRACKED_MANIFESTS`` recently resolved manifests, and the index of
    as many platform manifests, in memory.

    A blob fetched on a miss is sent to the client only after it is committed to the store, so
    the client receives verified bytes only; it waits for the whole download first.
    """

    def __init__(
        self,
        store: LayerStore,
        *,
        upstreams: Sequence[Upstream] = (),
        tag_ttl_s: float = 60.0,
        warm: bool = True,
        connections: int = 8,
        chunk_size: int = 16 << 20,
        clock: Callable[[], float] = time.monotonic,
        token: str | None = None,
    ) -> None:
        if token is not None and not token:
            raise ValueError("token must not be empty; pass None to serve without a token")
        self.store = store
        self._token = token
        self.warm = warm
        self.caches = {
            upstream.registry: UpstreamCache(
                store,
                upstream,
                tag_ttl_s=tag_ttl_s,
                connections=connections,
                chunk_size=chunk_size,
                clock=clock,
            )
            for upstream in upstreams
        }
        self.default = next(iter(self.caches.values()), None)
        self._tasks: set[asyncio.Task[None]] = set()
        self._warming: set[str] = set()
        # (registry, manifest digest) to the tag that resolved to it.
        self._tag_of: LruDict[tuple[str, str], str] = LruDict(MAX_TRACKED_MANIFESTS)
        # (registry, platform manifest digest) to the index served through a tag that lists it.
        self._index_of: LruDict[tuple[str, str], _IndexTag] = LruDict(MAX_TRACKED_MANIFESTS)
        # With warming off: (registry, image manifest digest) to the image waiting for its
        # blobs, and a blob digest to the keys of the images in ``_untagged`` that wait for it.
        self._untagged: LruDict[tuple[str, str], _Untagged] = LruDict(MAX_TRACKED_MANIFESTS)
        self._waiting_for: LruDict[str, list[tuple[str, str]]] = LruDict(MAX_TRACKED_MANIFESTS)
        self.app = web.Application(middlewares=[self._check_token])
        self.app.router.add_get("/v2/", self.version)
        self.app.router.add_route("*", "/v2/{name:.+}/manifests/{reference}", self.manifest)
        self.app.router.add_route("*", "/v2/{name:.+}/blobs/{digest}", self.blob)
        self.app.router.add_get("/v2/{name:.+}/tags/list", self.tag_list)
        self.app.router.add_post("/_warmstart/prefetch", self.prefetch)
        self.app.on_cleanup.append(self._cleanup)

    # -- requests ------------------------------------------------------------------------------

    @web.middleware
    async def _check_token(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token is None:
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), self._token.encode()
        ):
            return await handler(request)
        # The token is never logged; only the fact that it was missing or wrong.
        logger.info("rejected %s %s: missing or wrong bearer token", request.method, request.path)
        response = error_response(401, "UNAUTHORIZED", "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="warmstart-mirror"'
        return response

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({}, headers=API_VERSION_HEADER)

    def _cache_for(self, request: web.Request) -> UpstreamCache | None:
        namespace = request.query.get("ns")
        if namespace is None:
            return self.default
        return self.caches.get(namespace)

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "UNSUPPORTED", "this mirror is read-only")
        name, reference = request.match_info["name"], request.match_info["reference"]
        if not valid_repository(name):
            return error_response(400, "NAME_INVALID", f"invalid repository name {name!r}")
        cache = self._cache_for(request)
        tag = None if ":" in reference else reference
        try:
            if tag is None:
                digest = parse_digest_string(reference)
                media_type = await self._manifest_by_digest(cache, name, digest)
            else:
                if not valid_tag(tag):
                    return error_response(400, "TAG_INVALID", f"invalid tag {tag!r}")
                digest, media_type = await self._manifest_by_tag(cache, name, tag)
        except InvalidDigestError:
            return error_response(400, "DIGEST_INVALID", f"invalid digest {reference!r}")
        except (RegistryNotFoundError, LookupError):
            return error_response(404, "MANIFEST_UNKNOWN", f"manifest {name}:{reference} not found")
        except (RegistryError, DigestMismatchError, SizeMismatchError) as error:
            return self._upstream_failed(error, f"{name}:{reference}")

        body = await asyncio.to_thread(self._read_manifest, digest)
        detected = manifest_media_type(body) if body is not None else None
        if body is None or detected is None:
            return error_response(404, "MANIFEST_UNKNOWN", f"{digest} is not a manifest")
        headers = {
            **API_VERSION_HEADER,
            "Content-Type": media_type or detected,
            "Docker-Content-Digest": digest,
            "Content-Length": str(len(body)),
            "ETag": f'"{digest}"',
        }
        if request.method == "HEAD":
            return web.Response(status=200, headers=headers)
        if cache is not None:
            self._after_manifest_read(cache, name, digest, body)
        return web.Response(status=200, body=body, headers=headers)

    async def _manifest_by_digest(
        self, cache: UpstreamCache | None, name: str, digest: str
    ) -> str | None:
        if self.store.has(digest):
            return cache.media_type(digest) if cache is not None else None
        if cache is None:
            raise LookupError(digest)
        report = await cache.fetch_manifest(name, digest)
        return report.media_type

    async def _manifest_by_tag(
        self, cache: UpstreamCache | None, name: str, tag: str
    ) -> tuple[str, str | None]:
        if cache is None:
            descriptor = await asyncio.to_thread(self._local_tag, name, tag)
            return descriptor.digest, descriptor.media_type
        resolved = await cache.resolve_tag(name, tag)
        self._tag_of[(cache.upstream.registry, resolved.digest)] = tag
        return resolved.digest, resolved.media_type

    def _local_tag(self, name: str, tag: str) -> Any:
        candidates = [
            f"{name}:{tag}",
            *(c.store_tag(name, tag) for c in self.caches.values()),
            tag,
        ]
        for candidate in candidates:
            try:
                return self.store.resolve(candidate)
            except TagNotFoundError:
                continue
        raise TagNotFoundError(f"{name}:{tag}")

    def _read_manifest(self, digest: str) -> bytes | None:
        try:
            if self.store.stat(digest).size > MAX_MANIFEST_BYTES:
                return None
            return self.store.read(digest)
        except LookupError:
            return None

    def _after_manifest_read(
        self, cache: UpstreamCache, name: str, digest: str, body: bytes
    ) -> None:
        """Tag an index, and warm an image manifest, or wait for its blobs without ``warm``."""
        registry = cache.upstream.registry
        if cache.is_index(manifest_media_type(body)):
            tag = self._tag_of.get((registry, digest))
            if tag is not None:
                # The store keeps an index whose platforms are absent, so it is tagged now and
                # again when a platform that a client pulls is complete.
                for entry in index_entries(body):
                    self._index_of[(registry, entry)] = _IndexTag(name, digest, tag)
                self._spawn(self._tag_index(cache, _IndexTag(name, digest, tag)))
            return
        blobs = cache.remember_sizes(body)
        tag = self._tag_of.get((registry, digest))
        index = self._index_of.get((registry, digest))
        if not self.warm:
            if tag is not None or index is not None:
                missing = {blob for blob, _ in blobs if not self.store.has(blob)}
                self._tag_when_stored(_Untagged(cache, name, digest, tag, index, missing))
            return
        if digest in self._warming:
            return
        self._warming.add(digest)
        self._spawn(self._warm(cache, name, digest, body, tag, index))

    def _tag_when_stored(self, image: _Untagged) -> None:
        """Tag ``image`` now if its blobs are in the store, else once ``_blob_stored`` saw them.

        Only blob requests to this mirror count, so an image stays untagged while a blob it
        lists reaches the store in another way and no client requests it.
        """
        if not image.missing:
            self._spawn(self._tag_untagged(image))
            return
        key = (image.cache.upstream.registry, image.digest)
        self._untagged[key] = image
        for blob in image.missing:
            waiting = self._waiting_for.get(blob)
            if waiting is None:
                self._waiting_for[blob] = [key]
            elif key not in waiting:
                waiting.append(key)

    def _blob_stored(self, digest: str) -> None:
        """Tag the images of ``_untagged`` whose last missing blob was ``digest``."""
        waiting = self._waiting_for.pop(digest)
        for key in waiting or ():
            image = self._untagged.get(key)
            if image is None:
                continue
            image.missing.discard(digest)
            if not image.missing:
                self._untagged.pop(key)
                self._spawn(self._tag_untagged(image))

    async def _tag_untagged(self, image: _Untagged) -> None:
        cache = image.cache
        if image.tag is not None:
            try:
                await cache.tag_image(image.repository, image.digest, image.tag)
            except (StoreError, OSError) as error:
                logger.warning(
                    "tagging %s as %s failed: %s",
                    cache.store_tag(image.repository, image.tag),
                    image.digest,
                    error,
                )
        if image.index is not None:
            await self._tag_index(cache, image.index)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tag_index(self, cache: UpstreamCache, index: _IndexTag) -> None:
        try:
            await cache.tag_index(index.repository, index.digest, index.tag)
        except (StoreError, OSError) as error:
            logger.warning(
                "tagging index %s/%s:%s failed: %s",
                cache.upstream.registry,
                index.repository,
                index.tag,
                error,
            )

    async def _warm(
        self,
        cache: UpstreamCache,
        name: str,
        digest: str,
        body: bytes,
        tag: str | None,
        index: _IndexTag | None,
    ) -> None:
        try:
            await cache.warm_image(name, digest, body, tag)
            if index is not None:
                await self._tag_index(cache, index)
        except (RegistryError, DigestMismatchError, SizeMismatchError, OSError) as error:
            # The client's own blob requests retry each missing blob; this was only a head start.
            logger.warning(
                "warming %s/%s@%s failed: %s", cache.upstream.registry, name, digest, error
            )
        finally:
            self._warming.discard(digest)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "UNSUPPORTED", "this mirror is read-only")
        name, text = request.match_info["name"], request.match_info["digest"]
        if not valid_repository(name):
            return error_response(400, "NAME_INVALID", f"invalid repository name {name!r}")
        try:
            digest = parse_digest_string(text)
        except InvalidDigestError:
            return error_response(400, "DIGEST_INVALID", f"invalid digest {text!r}")
        if not self.store.has(digest):
            cache = self._cache_for(request)
            if cache is None:
                return error_response(404, "BLOB_UNKNOWN", f"blob {digest} not found")
            try:
                await cache.fetch_blob(name, digest)
            except RegistryNotFoundError:
                return error_response(404, "BLOB_UNKNOWN", f"blob {digest} not found upstream")
            except (RegistryError, DigestMismatchError, SizeMismatchError) as error:
                return self._upstream_failed(error, f"{name}@{digest}")
        self._blob_stored(digest)
        headers = {
            **API_VERSION_HEADER,
            "Content-Type": "application/octet-stream",
            "Docker-Content-Digest": digest,
            "ETag": f'"{digest}"',
        }
        return web.FileResponse(self.store.path(digest), headers=headers)

    async def tag_list(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not valid_repository(name):
            return error_response(400, "NAME_INVALID", f"invalid repository name {name!r}")
        prefixes = [f"{name}:", *(f"{registry}/{name}:" for registry in self.caches)]
        descriptors = await asyncio.to_thread(self.store.tags)
        tags = sorted(
            {
                descriptor.tag[len(prefix) :]
                for descriptor in descriptors
                for prefix in prefixes
                if descriptor.tag is not None and descriptor.tag.startswith(prefix)
            }
        )
        # TODO: list the upstream's tags too; this lists only tags cached in the store.
        return web.json_response({"name": name, "tags": tags}, headers=API_VERSION_HEADER)

    async def prefetch(self, request: web.Request) -> web.Response:
        from warmstart.mirror.prefetch import PrefetchRequestError, prefetch_from_request

        try:
            result = await prefetch_from_request(self, await request.read())
        except PrefetchRequestError as error:
            return error_response(400, "UNSUPPORTED", str(error))
        return web.json_response(result)

    def _upstream_failed(self, error: Exception, what: str) -> web.Response:
        logger.warning("pull-through of %s failed: %s", what, error)
        return error_response(502, "UNKNOWN", f"fetching {what} from the upstream failed: {error}")

    # -- lifecycle -----------------------------------------------------------------------------

    async def _cleanup(self, app: web.Application) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel warm-ups and upstream fetches; partial blobs stay in the store for a resume."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for cache in self.caches.values():
            await cache.close()

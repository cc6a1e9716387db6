"""Prefetch: pull whole images into a store ahead of need, by hand or when the engine scales up.

``prefetch`` pulls into a store directly. ``POST /_warmstart/prefetch`` on a running mirror does
the same for references of its configured upstreams (``prefetch_mirror`` sends it).
``ImagePrefetcher`` is the engine's prefetch hook: it pulls an endpoint's images when a forecast
exceeds the endpoint's capacity, so new instances find their layers in the mirror instead of in
the remote registry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from warmstart import Decision, PullReport
from warmstart.errors import RegistryError, StoreError
from warmstart.store import LayerStore

if TYPE_CHECKING:
    from warmstart.mirror.app import Mirror

__all__ = [
    "ImagePrefetcher",
    "PrefetchRequestError",
    "prefetch",
    "prefetch_from_request",
    "prefetch_mirror",
    "registry_of",
]

logger = logging.getLogger("warmstart.mirror")


class PrefetchRequestError(ValueError):
    """A prefetch request body is malformed or names a registry the mirror does not pull from."""


def registry_of(reference: str) -> str:
    """Return the registry part of an image reference, ``docker.io`` when there is none."""
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return "docker.io" if first == "index.docker.io" else first
    return "docker.io"


async def prefetch(
    store: LayerStore,
    references: Iterable[str],
    *,
    platform: str | None = None,
    concurrency: int = 2,
    connections: int = 8,
    insecure_registries: Sequence[str] = (),
) -> list[PullReport | BaseException]:
    """Pull each image into ``store`` and tag it there; returns a report or the error per image.

    At most ``concurrency`` images are pulled at once; the blobs of each go through the chunked
    puller with ``connections`` connections per registry host. A failed image does not stop
    the others; its exception is returned in its place.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency!r}")
    limit = asyncio.Semaphore(concurrency)

    async def pull_one(reference: str) -> PullReport:
        async with limit:
            report = await store.pull(
                reference,
                platform=platform,
                connections=connections,
                insecure_registries=list(insecure_registries),
            )
            logger.info(
                "prefetched %s: %d bytes fetched, %d reused, %.2f s",
                reference,
                report.bytes_fetched,
                report.bytes_reused,
                report.seconds,
            )
            return report

    results = await asyncio.gather(
        *(pull_one(reference) for reference in references), return_exceptions=True
    )
    for result in results:
        if isinstance(result, asyncio.CancelledError):
            raise result
    return list(results)


def report_json(result: PullReport | BaseException, reference: str) -> dict[str, Any]:
    """Describe one prefetch outcome as JSON."""
    if isinstance(result, BaseException):
        return {"reference": reference, "error": f"{type(result).__name__}: {result}"}
    return {
        "reference": reference,
        "tag": result.tag,
        "manifest_digest": result.manifest_digest,
        "bytes_fetched": result.bytes_fetched,
        "bytes_reused": result.bytes_reused,
        "seconds": round(result.seconds, 6),
    }


async def prefetch_from_request(mirror: Mirror, body: bytes) -> dict[str, Any]:
    """Run a ``POST /_warmstart/prefetch`` body: ``{"references": [...], "platform": ...}``.

    Raises ``PrefetchRequestError`` for malformed JSON and for references to registries that
    are not upstreams of the mirror, so the endpoint never fetches from an arbitrary host.
    """
    try:
        request = json.loads(body)
    # json.loads raises RecursionError for nesting deeper than the interpreter's stack.
    except (ValueError, RecursionError) as error:
        raise PrefetchRequestError(f"invalid JSON body: {error}") from None
    references = request.get("references") if isinstance(request, dict) else None
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise PrefetchRequestError('the body must be {"references": ["registry/name:tag", ...]}')
    platform = request.get("platform")
    if platform is not None and not isinstance(platform, str):
        raise PrefetchRequestError("platform must be a string such as linux/amd64")
    for reference in references:
        if registry_of(reference) not in mirror.caches:
            raise PrefetchRequestError(
                f"{reference} is not on an upstream of this mirror ({', '.join(mirror.caches)})"
            )
    insecure = [c.upstream.registry for c in mirror.caches.values() if c.upstream.insecure]
    results = await prefetch(
        mirror.store, references, platform=platform, insecure_registries=insecure
    )
    return {"images": [report_json(r, ref) for r, ref in zip(results, references, strict=True)]}


class ImagePrefetcher:
    """The built-in prefetch hook, which pulls an endpoint's images when the engine calls it.

    Pass it as ``Engine(..., prefetch=prefetcher)``: it is then called when a forecast exceeds
    an endpoint's capacity. Registered with ``engine.add_callback(prefetcher)`` it also acts on
    every decision that raises capacity. ``images`` maps endpoint names to image references;
    ``pull`` fetches a list of references (see ``to_store`` and ``to_mirror``). A prefetch for
    an endpoint is skipped while the previous one for it still runs. Call it on the engine's
    event loop, and ``await close()`` at the end to cancel prefetches still running.
    """

    def __init__(
        self,
        images: Mapping[str, Sequence[str]],
        pull: Callable[[Sequence[str]], Awaitable[object]],
    ) -> None:
        self.images = {endpoint: list(refs) for endpoint, refs in images.items()}
        self.pull = pull
        self._running: dict[str, asyncio.Task[None]] = {}
        self.started = 0

    @classmethod
    def to_store(
        cls, store: LayerStore, images: Mapping[str, Sequence[str]], **options: Any
    ) -> ImagePrefetcher:
        """Warm a local store; ``options`` go to ``prefetch``."""

        async def pull(references: Sequence[str]) -> None:
            for result in await prefetch(store, references, **options):
                if isinstance(result, BaseException):
                    raise result

        return cls(images, pull)

    @classmethod
    def to_mirror(
        cls, url: str, images: Mapping[str, Sequence[str]], *, token: str | None = None
    ) -> ImagePrefetcher:
        """Warm a running mirror at ``url`` through ``POST /_warmstart/prefetch``."""

        async def pull(references: Sequence[str]) -> None:
            await prefetch_mirror(url, references, token=token)

        return cls(images, pull)

    def __call__(self, decision: Decision) -> None:
        if not (decision.prefetch or decision.direction == "up"):
            return
        references = self.images.get(decision.endpoint)
        if not references or decision.endpoint in self._running:
            return
        logger.info(
            "endpoint %s: prefetching %s (capacity %d -> %d)",
            decision.endpoint,
            ", ".join(references),
            decision.current,
            decision.desired,
        )
        task = asyncio.get_running_loop().create_task(self._run(decision.endpoint, references))
        self._running[decision.endpoint] = task
        self.started += 1

    async def _run(self, endpoint: str, references: Sequence[str]) -> None:
        try:
            await self.pull(references)
        except (RegistryError, StoreError, OSError) as error:
            logger.error("prefetch for endpoint %s failed: %s", endpoint, error)
        finally:
            self._running.pop(endpoint, None)

    async def wait(self) -> None:
        """Wait until every running prefetch has finished."""
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def close(self) -> None:
        """Cancel running prefetches and wait for them to stop."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def prefetch_mirror(
    url: str, references: Sequence[str], *, platform: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """Ask the mirror at ``url`` to pull ``references`` into its store; returns its JSON reply.

    Raises ``OSError`` when the mirror rejects the request or an image fails.
    """
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = {"references": list(references), "platform": platform}
    endpoint = url.rstrip("/") + "/_warmstart/prefetch"
    async with (
        aiohttp.ClientSession() as session,
        session.post(endpoint, json=body, headers=headers) as response,
    ):
        result: dict[str, Any] = await response.json(content_type=None)
        if response.status != 200:
            message = result.get("errors", [{}])[0].get("message", response.reason)
            raise OSError(f"mirror {url} rejected the prefetch: {message}")
    failed = [image for image in result.get("images", []) if "error" in image]
    if failed:
        raise OSError(
            f"mirror {url} failed to prefetch {failed[0]['reference']}: {failed[0]['error']}"
        )
    return result

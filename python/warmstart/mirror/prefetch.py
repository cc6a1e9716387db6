"""Prefetch: pull whole images into a store ahead of need, by hand or when the engine scales up.

``prefetch`` pulls into a store directly. ``POST /_warmstart/prefetch`` on a running mirror does
the same for references of its configured upstreams. ``ScaleUpPrefetcher`` is an engine decision
callback that prefetches an endpoint's images whenever a decision raises its capacity, so the
new instances find their layers in the mirror instead of in the remote registry.
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
    "PrefetchRequestError",
    "ScaleUpPrefetcher",
    "prefetch",
    "prefetch_from_request",
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
    except ValueError as error:
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


class ScaleUpPrefetcher:
    """Prefetch an endpoint's images when an engine decision raises its capacity.

    Register it with ``engine.add_callback(prefetcher)``. ``images`` maps endpoint names to
    image references; ``pull`` fetches a list of references (``prefetch`` into a store, or a
    POST to a mirror). A prefetch for an endpoint is skipped while the previous one for it is
    still running. Call it on the event loop the engine runs on, and ``await close()`` at the
    end to cancel prefetches still running.
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

    def __call__(self, decision: Decision) -> None:
        if decision.direction != "up":
            return
        references = self.images.get(decision.endpoint)
        if not references or decision.endpoint in self._running:
            return
        logger.info(
            "endpoint %s scales %d -> %d, prefetching %s",
            decision.endpoint,
            decision.current,
            decision.desired,
            ", ".join(references),
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

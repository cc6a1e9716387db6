"""The layer store: verified, content-addressed OCI blobs on local disk."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, TypeVar

from warmstart import _native

__all__ = ["DEFAULT_CONNECTIONS", "MAX_CONNECTIONS", "MIN_CHUNK_SIZE", "LayerStore"]

T = TypeVar("T")

# The smallest byte range a pull accepts: the native layer (``fetch_options`` in
# rust/layerstore-py/src/pull.rs) rejects a smaller chunk_size with this same bound.
MIN_CHUNK_SIZE = 64 << 10

# Connections per host of a pull by default; the native layer's default, so both agree.
DEFAULT_CONNECTIONS: int = _native.DEFAULT_CONNECTIONS

# Maximum connections per host that the command line and profiles accept. It is a sanity bound
# that catches a typo, far above the connections the pull uses by default.
MAX_CONNECTIONS = 1024

# Transfers block a thread each while the Rust runtime moves the bytes. A dedicated pool keeps
# them from starving asyncio's default executor; its threads are joined at interpreter exit.
_TRANSFERS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="warmstart-transfer")
# Manifest fetches get their own pool, so that a tag resolves at once while blob downloads
# (a mirror warming a many-layer image, say) hold every thread of the transfer pool.
_MANIFEST_TRANSFERS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="warmstart-manifest")


async def _run_transfer(
    function: Callable[..., T], /, *args: Any, _pool: ThreadPoolExecutor = _TRANSFERS, **kwargs: Any
) -> T:
    """Run a blocking transfer on ``_pool``; cancelling the awaitable cancels the transfer.

    The transfer stops within moments of the cancellation: its downloads are dropped, and
    partial blobs stay in ``ingest/`` for a resume.
    """
    token = _native.CancelToken()
    call = functools.partial(function, *args, cancel=token, **kwargs)
    try:
        return await asyncio.get_running_loop().run_in_executor(_pool, call)
    except asyncio.CancelledError:
        token.cancel()
        raise


class LayerStore(_native.LayerStore):
    """A content-addressed store of OCI blobs rooted at a directory, in OCI image layout format.

    Every blob under ``blobs/`` is complete and verified: writes go to ``ingest/`` and are moved
    into place only after their size and digest are checked. Several threads and processes may
    use one store at once. Every blocking method releases the GIL while it hashes or does I/O;
    the transfer methods (``pull``, ``fetch`` and friends) are coroutines.

    A tag names a complete image, or an index whose platforms may be partly absent (each one in
    the store is complete). ``resolve_platform`` selects one platform of a tag and raises
    ``PlatformNotInStoreError`` for a platform that was not pulled; see ``docs/store.md``.

    Raises ``StoreError`` and ``RegistryError`` subclasses from :mod:`warmstart.errors`.
    """

    def open(self, digest: str) -> BinaryIO:
        """Open a committed blob for reading in binary mode.

        Raises ``BlobNotFoundError`` when the blob is not in the store.
        """
        return open(self.path(digest), "rb")

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    async def pull(
        self,
        reference: str,
        *,
        platform: str | None = None,
        connections: int = DEFAULT_CONNECTIONS,
        chunk_size: int = 16 << 20,
        tag: str | None = None,
        insecure_registries: Sequence[str] = (),
        ca_certificates: Sequence[str | os.PathLike[str]] = (),
        stall_timeout_s: float = 30.0,
        max_attempts: int = 5,
        progress: Callable[[_native.PullProgress], object] | None = None,
    ) -> _native.PullReport:
        """Pull an image or OCI artifact into the store and tag it; see ``docs/pull.md``.

        From an index the store keeps the index too, and the tag names the index, so pulls of
        other platforms under one tag add to it. ``PullReport.manifest_digest`` is the platform's
        image manifest and ``index_digest`` the index.

        ``platform`` is ``os/arch[/variant]`` (default: this host). ``connections`` counts per
        host, and ``chunk_size`` is in bytes. A connection that sends nothing for
        ``stall_timeout_s`` seconds is abandoned and its range retried. ``progress`` is called
        every 0.2 s with a ``PullProgress``, and once at the end. Blobs already in the store are
        not fetched.
        """
        return await _run_transfer(
            self._pull,
            reference,
            platform=platform,
            connections=connections,
            chunk_size=chunk_size,
            tag=tag,
            insecure_registries=list(insecure_registries),
            ca_certificates=list(ca_certificates),
            stall_timeout_s=stall_timeout_s,
            max_attempts=max_attempts,
            progress=progress,
        )

    async def fetch(
        self,
        url: str,
        *,
        digest: str,
        size: int | None = None,
        connections: int = DEFAULT_CONNECTIONS,
        chunk_size: int = 16 << 20,
        stall_timeout_s: float = 30.0,
        max_attempts: int = 5,
        progress: Callable[[_native.PullProgress], object] | None = None,
    ) -> _native.BlobReport:
        """Download one blob from an HTTP(S) URL, verified against ``digest``.

        Without ``size`` (bytes), a HEAD request reads it from ``Content-Length``.
        """
        return await _run_transfer(
            self._fetch,
            url,
            digest=digest,
            size=size,
            connections=connections,
            chunk_size=chunk_size,
            stall_timeout_s=stall_timeout_s,
            max_attempts=max_attempts,
            progress=progress,
        )

    async def pull_manifest(self, reference: str, **options: Any) -> _native.ManifestReport:
        """Fetch one manifest or index into the store without tagging it.

        ``options`` are those of ``pull`` that configure the client (``insecure_registries``,
        ``ca_certificates``, ``stall_timeout_s``, ``max_attempts``).
        """
        return await _run_transfer(
            self._pull_manifest, reference, _pool=_MANIFEST_TRANSFERS, **options
        )

    async def pull_blob(self, reference: str, **options: Any) -> _native.BlobReport:
        """Fetch one blob of the reference's repository by ``digest=`` unless it is present.

        ``options`` are ``digest`` (required), ``size`` and those of ``pull``.
        """
        return await _run_transfer(self._pull_blob, reference, **options)

    async def pull_and_unpack(
        self, reference: str, target: str | os.PathLike[str], **options: Any
    ) -> tuple[_native.PullReport, _native.UnpackReport]:
        """Pull an image and unpack it into ``target``, each layer extracting while it downloads.

        A layer is published only after the store verified its blob and its uncompressed tar
        stream matched the config's diff_id. With ``flatten=True`` the layers are applied in
        manifest order to one root filesystem, each as its bytes arrive. ``options`` are
        ``flatten`` and those of ``pull``; see ``docs/unpack.md``.
        """
        return await _run_transfer(self._pull_and_unpack, reference, target, **options)

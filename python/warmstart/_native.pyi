"""Type stubs for the Rust extension module; checked against it by ``mypy.stubtest``."""

import builtins
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, final

from typing_extensions import disjoint_base

__all__ = [
    "DEFAULT_CONNECTIONS",
    "BlobInfo",
    "BlobReport",
    "CancelToken",
    "Descriptor",
    "GcReport",
    "ImportReport",
    "LayerReport",
    "LayerStore",
    "ManifestReport",
    "Problem",
    "PullProgress",
    "PullReport",
    "UnpackReport",
    "Usage",
    "VerifyReport",
    "__version__",
    "parse_digest_string",
    "parse_platform_string",
    "parse_reference_string",
    "parse_tag_string",
    "parse_url_string",
]

__version__: str
DEFAULT_CONNECTIONS: int

@final
class BlobInfo:
    @property
    def digest(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def created(self) -> bool:
        """True when this call wrote the blob, False when it was already in the store."""

    def __eq__(self, value: object, /) -> bool: ...

@final
class Descriptor:
    @property
    def media_type(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def tag(self) -> str | None: ...
    @property
    def json(self) -> str:
        """The OCI descriptor as JSON, with every field it carries."""

@final
class Problem:
    @property
    def kind(self) -> str:
        """The problem: ``digest_mismatch``, ``truncated``, ``size_mismatch``, ``missing``,
        ``invalid_name`` or ``invalid_manifest``."""

    @property
    def digest(self) -> str | None: ...
    @property
    def path(self) -> str | None: ...
    @property
    def actual_digest(self) -> str | None: ...
    @property
    def expected_size(self) -> int | None: ...
    @property
    def actual_size(self) -> int | None: ...
    @property
    def referenced_by(self) -> str | None: ...
    @property
    def detail(self) -> str | None: ...

@final
class VerifyReport:
    @property
    def checked_blobs(self) -> int: ...
    @property
    def checked_bytes(self) -> int: ...
    @property
    def problems(self) -> list[Problem]: ...
    @property
    def quarantined(self) -> list[str]: ...
    @property
    def ok(self) -> bool: ...

@final
class GcReport:
    @property
    def removed_blobs(self) -> list[BlobInfo]: ...
    @property
    def removed_blob_bytes(self) -> int: ...
    @property
    def removed_ingest_files(self) -> list[str]: ...
    @property
    def removed_ingest_bytes(self) -> int: ...
    @property
    def kept_blobs(self) -> int: ...
    @property
    def kept_blob_bytes(self) -> int: ...

@final
class Usage:
    @property
    def blobs(self) -> int: ...
    @property
    def blob_bytes(self) -> int: ...
    @property
    def ingest_files(self) -> int: ...
    @property
    def ingest_bytes(self) -> int: ...
    @property
    def quarantine_files(self) -> int: ...
    @property
    def quarantine_bytes(self) -> int: ...

@final
class ImportReport:
    @property
    def images(self) -> list[Descriptor]: ...
    @property
    def blobs_added(self) -> int: ...
    @property
    def bytes_added(self) -> int: ...
    @property
    def blobs_present(self) -> int: ...

@final
class BlobReport:
    @property
    def digest(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def media_type(self) -> str: ...
    @property
    def fetched_bytes(self) -> int:
        """Bytes received from the network for this blob, retries included."""

    @property
    def reused(self) -> bool:
        """True when the blob was already in the store."""

    @property
    def ranged(self) -> bool:
        """True when the blob's bytes came from range requests, a resumed pull's included.

        False when the blob came as one stream from byte 0 and for a reused blob.
        """

    @property
    def requests(self) -> int: ...
    @property
    def seconds(self) -> float: ...

@final
class PullReport:
    @property
    def reference(self) -> str: ...
    @property
    def tag(self) -> str: ...
    @property
    def manifest_digest(self) -> str: ...
    @property
    def media_type(self) -> str: ...
    @property
    def index_digest(self) -> str | None: ...
    @property
    def blobs(self) -> list[BlobReport]: ...
    @property
    def bytes_fetched(self) -> int: ...
    @property
    def bytes_reused(self) -> int: ...
    @property
    def manifest_seconds(self) -> float:
        """Seconds until the manifest (and its index, if any) arrived, before any blob request."""

    @property
    def seconds(self) -> float: ...

@final
class ManifestReport:
    @property
    def digest(self) -> str: ...
    @property
    def media_type(self) -> str: ...
    @property
    def size(self) -> int: ...

@final
class CancelToken:
    def __new__(cls) -> CancelToken: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...

@final
class PullProgress:
    @property
    def total_bytes(self) -> int: ...
    @property
    def fetched_bytes(self) -> int: ...
    @property
    def reused_bytes(self) -> int: ...
    @property
    def blobs_total(self) -> int: ...
    @property
    def blobs_done(self) -> int: ...
    @property
    def finished(self) -> bool: ...

@final
class LayerReport:
    @property
    def digest(self) -> str: ...
    @property
    def diff_id(self) -> str: ...
    @property
    def media_type(self) -> str: ...
    @property
    def compressed_bytes(self) -> int: ...
    @property
    def uncompressed_bytes(self) -> int:
        """Bytes of the tar stream; 0 when an earlier run had already unpacked the layer."""

    @property
    def entries(self) -> int: ...
    @property
    def reused(self) -> bool:
        """True when the layer was published before.

        That is by an earlier run, or at the layer's first position in an image that lists it
        twice.
        """

    @property
    def seconds(self) -> float: ...

@final
class UnpackReport:
    @property
    def target(self) -> Path: ...
    @property
    def manifest_digest(self) -> str: ...
    @property
    def layout(self) -> str:
        """``overlay`` or ``flatten``."""

    @property
    def result(self) -> Path:
        """The ``rootfs`` directory (flatten) or the ``lowerdir`` file (overlay)."""

    @property
    def layers(self) -> list[LayerReport]:
        """From the bottom layer up."""

    @property
    def warnings(self) -> list[str]:
        """Metadata that could not be kept, one line per kind of loss."""

    @property
    def seconds(self) -> float:
        """Wall time of the unpack.

        From ``pull_and_unpack`` in the overlay layout it runs from the start of the first
        layer's extraction, during the pull, to the end.
        """

@disjoint_base
class LayerStore:
    def __new__(cls, path: str | os.PathLike[str]) -> LayerStore: ...
    @property
    def root(self) -> Path: ...
    def put(
        self, data: bytes, *, digest: str | None = None, size: int | None = None
    ) -> BlobInfo: ...
    def put_file(
        self, path: str | os.PathLike[str], *, digest: str | None = None, size: int | None = None
    ) -> BlobInfo: ...
    def put_stream(
        self,
        stream: IO[bytes] | Iterable[bytes],
        *,
        digest: str | None = None,
        size: int | None = None,
    ) -> BlobInfo: ...
    def read(self, digest: str, offset: int = 0, length: int | None = None) -> bytes: ...
    def path(self, digest: str) -> Path: ...
    def has(self, digest: str) -> bool: ...
    def stat(self, digest: str) -> BlobInfo: ...
    def list(self) -> builtins.list[BlobInfo]: ...
    def delete(self, digest: str, *, force: bool = False) -> bool: ...
    def verify(self, *, quarantine: bool = False) -> VerifyReport: ...
    def tag(self, tag: str, digest: str) -> Descriptor:
        """Point ``tag`` at the manifest or index ``digest``; returns the descriptor written.

        The image must be complete. An index may lack some platforms, but every platform
        manifest of it in the store must have its config and layers, else ``MissingBlobError``.
        """

    def untag(self, tag: str) -> bool: ...
    def resolve(self, tag: str) -> Descriptor: ...
    def resolve_platform(self, reference: str, platform: str | None = None) -> Descriptor:
        """Resolve a tag or manifest digest to the image manifest for ``platform``.

        ``platform`` is ``os/architecture[/variant]``, the host's when None. An image manifest is
        returned as is. For an index, the platform must be in the store whole, else
        ``PlatformNotInStoreError``; an index without that platform raises
        ``PlatformNotFoundError``.
        """

    def tags(self) -> builtins.list[Descriptor]: ...
    def gc(
        self,
        *,
        grace_period_s: float = 3600.0,
        ingest_max_age_s: float = 86400.0,
        dry_run: bool = False,
    ) -> GcReport: ...
    def usage(self) -> Usage: ...
    def import_layout(
        self, path: str | os.PathLike[str], *, tags: builtins.list[str] | None = None
    ) -> ImportReport: ...
    def import_archive(
        self, path: str | os.PathLike[str], *, tag: str | None = None
    ) -> ImportReport: ...
    def export_layout(
        self, path: str | os.PathLike[str], *, tags: builtins.list[str] | None = None
    ) -> ImportReport: ...
    def _pull(
        self,
        reference: str,
        *,
        platform: str | None = None,
        connections: int = 16,
        chunk_size: int = 16777216,
        tag: str | None = None,
        insecure_registries: builtins.list[str] = ...,
        ca_certificates: builtins.list[str | os.PathLike[str]] = ...,
        stall_timeout_s: float = 30.0,
        max_attempts: int = 5,
        progress: Callable[[PullProgress], object] | None = None,
        cancel: CancelToken | None = None,
    ) -> PullReport: ...
    def _fetch(
        self,
        url: str,
        *,
        digest: str,
        size: int | None = None,
        connections: int = 16,
        chunk_size: int = 16777216,
        stall_timeout_s: float = 30.0,
        max_attempts: int = 5,
        progress: Callable[[PullProgress], object] | None = None,
        cancel: CancelToken | None = None,
    ) -> BlobReport: ...
    def _pull_manifest(
        self,
        reference: str,
        *,
        insecure_registries: builtins.list[str] = ...,
        ca_certificates: builtins.list[str | os.PathLike[str]] = ...,
        stall_timeout_s: float = 30.0,
        max_attempts: int = 5,
        cancel: CancelToken | None = None,
    ) -> ManifestReport:
        """Fetch one manifest or index by tag or digest into the store, without tagging it."""

    def _pull_blob(
        self,
        reference: str,
        *,
        digest: str,
        size: int | None = None,
        connections: int = 16,
        chunk_size: int = 16777216,
        insecure_registries: builtins.list[str] = ...,
        ca_certificates: builtins.list[str | os.PathLike[str]] = ...,
        stall_timeout_s: float = 30.0,
        max_attempts: int = 5,
        progress: Callable[[PullProgress], object] | None = None,
        cancel: CancelToken | None = None,
    ) -> BlobReport:
        """Fetch one blob of the reference's repository by digest, unless it is in the store.

        Without ``size``, a HEAD request reads it from ``Content-Length``.
        """
    def unpack(
        self,
        reference: str,
        target: str | os.PathLike[str],
        *,
        flatten: bool = False,
        platform: str | None = None,
    ) -> UnpackReport:
        """Unpack a tag or manifest digest into ``target``.

        From an index it selects ``platform`` (``os/architecture[/variant]``, the host's when
        None) as ``resolve_platform`` does, and raises ``PlatformNotInStoreError`` when that
        platform was not pulled.
        """
    def _pull_and_unpack(
        self,
        reference: str,
        target: str | os.PathLike[str],
        *,
        flatten: bool = False,
        platform: str | None = None,
        connections: int = 16,
        chunk_size: int = 16777216,
        tag: str | None = None,
        insecure_registries: builtins.list[str] = ...,
        ca_certificates: builtins.list[str | os.PathLike[str]] = ...,
        stall_timeout_s: float = 30.0,
        max_attempts: int = 5,
        progress: Callable[[PullProgress], object] | None = None,
        cancel: CancelToken | None = None,
    ) -> tuple[PullReport, UnpackReport]: ...

def parse_digest_string(text: str) -> str: ...
def parse_reference_string(text: str) -> str:
    """Parse an image reference; returns ``registry/repository[:tag][@digest]``."""

def parse_platform_string(text: str) -> str:
    """Parse ``os/architecture[/variant]``; raises ``InvalidReferenceError`` when invalid."""

def parse_tag_string(text: str) -> str:
    """Check a tag of the store; raises ``InvalidTagError`` when invalid."""

def parse_url_string(text: str) -> str:
    """Parse an HTTP or HTTPS URL; raises ``InvalidReferenceError`` when invalid."""

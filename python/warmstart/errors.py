"""Exceptions raised by warmstart.

Each class also inherits the standard library category it belongs to, so callers can catch
``ValueError``, ``LookupError`` or ``OSError`` without importing warmstart::

    WarmstartError
    ├── StoreError
    │   ├── InvalidDigestError      (ValueError)   a string is not <algorithm>:<hex>
    │   ├── InvalidTagError         (ValueError)   a tag has characters OCI does not allow
    │   ├── InvalidRangeError       (ValueError)   a read past the end of a blob
    │   ├── InvalidLayoutError      (ValueError)   an OCI layout, archive or JSON file is malformed
    │   ├── DigestMismatchError     (ValueError)   content hashes to another digest
    │   ├── SizeMismatchError       (ValueError)   content has another size than declared
    │   ├── BlobInUseError          (ValueError)   a delete would break a tagged image
    │   ├── BlobNotFoundError       (LookupError)  a digest is not in the store
    │   ├── TagNotFoundError        (LookupError)  a tag is not in index.json
    │   ├── MissingBlobError        (LookupError)  an import source or an image to tag lacks a blob
    │   │   └── ForeignLayerError                  ... and that blob is a foreign layer
    │   ├── PlatformNotInStoreError (LookupError)  a platform of a stored index was not pulled
    │   └── StoreIOError            (OSError)      a file system operation failed
    ├── RegistryError                              a registry request failed
    │   ├── InvalidReferenceError   (ValueError)   an image reference, URL or platform is invalid
    │   ├── RegistryAuthError       (PermissionError)  credentials missing or refused
    │   ├── RegistryNotFoundError   (LookupError)  a manifest or blob is not in the registry
    │   ├── PlatformNotFoundError   (LookupError)  an index has no manifest for the platform
    │   ├── RegistryTimeoutError    (TimeoutError) a connection stalled
    │   ├── RegistryConnectionError (ConnectionError)  a connection failed
    │   └── RegistryProtocolError                  the server broke the protocol
    ├── UnpackError                                unpacking an image from the store failed
    │   ├── UnsafeEntryError        (ValueError)   a layer entry would write outside the target
    │   ├── InvalidLayerError       (ValueError)   a layer is corrupt or not what its type says
    │   ├── DiffIdMismatchError     (ValueError)   a layer's tar stream is not the config's diff_id
    │   ├── InvalidImageError       (ValueError)   a manifest or config cannot be unpacked
    │   ├── UnpackTargetError       (FileExistsError)  the target holds another image or other files
    │   └── UnpackIOError           (OSError)      a file system operation failed
    └── EngineError                                the scaling engine (warmstart.engine.errors)

A pull that fails because of content (a digest or size mismatch) raises the store error of that
kind. ``RegistryError`` and its subclasses carry ``status`` (the HTTP status or ``None``),
``url`` (without credentials or query string), ``registry``, ``repository`` and ``digest``.

Attributes name the failing values: ``DigestMismatchError.expected`` and ``.actual`` (digest
strings) and ``.bytes_read``; ``SizeMismatchError.expected`` and ``.actual`` (bytes);
``BlobNotFoundError.digest``; ``TagNotFoundError.tag``; ``StoreIOError.filename`` and ``.errno``.
``UnsafeEntryError.layer``, ``.entry`` and ``.reason`` name the rejected tar entry. A store failure
during an unpack (a blob missing from the store, say) raises the store error of that kind.
"""

from __future__ import annotations

__all__ = [
    "BlobInUseError",
    "BlobNotFoundError",
    "DiffIdMismatchError",
    "DigestMismatchError",
    "ForeignLayerError",
    "InvalidDigestError",
    "InvalidImageError",
    "InvalidLayerError",
    "InvalidLayoutError",
    "InvalidRangeError",
    "InvalidReferenceError",
    "InvalidTagError",
    "MissingBlobError",
    "PlatformNotFoundError",
    "PlatformNotInStoreError",
    "RegistryAuthError",
    "RegistryConnectionError",
    "RegistryError",
    "RegistryNotFoundError",
    "RegistryProtocolError",
    "RegistryTimeoutError",
    "SizeMismatchError",
    "StoreError",
    "StoreIOError",
    "TagNotFoundError",
    "UnpackError",
    "UnpackIOError",
    "UnpackTargetError",
    "UnsafeEntryError",
    "WarmstartError",
]


class WarmstartError(Exception):
    """Base class of every exception warmstart raises on purpose."""


class StoreError(WarmstartError):
    """A layer store operation failed."""


class InvalidDigestError(StoreError, ValueError):
    """A string is not a valid ``sha256:<64 hex>`` or ``sha512:<128 hex>`` digest."""

    value: str


class InvalidTagError(StoreError, ValueError):
    """A tag is empty, too long, or has characters an OCI reference does not allow."""

    tag: str


class InvalidRangeError(StoreError, ValueError):
    """A byte range reaches past the end of a blob."""

    digest: str


class InvalidLayoutError(StoreError, ValueError):
    """An OCI layout, ``docker save`` archive or JSON document is malformed."""


class DigestMismatchError(StoreError, ValueError):
    """Content does not hash to the expected digest; nothing was stored."""

    expected: str
    actual: str
    bytes_read: int


class SizeMismatchError(StoreError, ValueError):
    """Content is not the expected number of bytes; nothing was stored."""

    expected: int
    actual: int


class BlobInUseError(StoreError, ValueError):
    """A blob is reachable from ``index.json``; deleting it would leave an image incomplete."""

    digest: str
    referenced_by: str


class BlobNotFoundError(StoreError, LookupError):
    """A digest is not in the store."""

    digest: str


class TagNotFoundError(StoreError, LookupError):
    """A tag is not in the store's ``index.json`` (or in an import source's)."""

    tag: str


class MissingBlobError(StoreError, LookupError):
    """An import source refers to a blob it does not contain, or an image to tag is incomplete.

    ``digest`` is the missing blob. When tagging fails, ``referenced_by`` names the manifest that
    refers to it, with its platform for an entry of an index.
    """

    digest: str


class PlatformNotInStoreError(StoreError, LookupError):
    """A tagged index lists the platform, but the store does not hold that platform whole.

    ``reference`` and ``platform`` are what was asked for, ``manifest`` is the platform's manifest
    digest as the index lists it, and ``digest`` is the first blob missing (the manifest itself
    when the platform was never pulled). Pull that platform to fix it.
    """

    reference: str
    platform: str
    manifest: str
    digest: str


class ForeignLayerError(MissingBlobError):
    """A ``docker save`` archive lacks the bytes of a foreign (non-distributable) layer."""


class _MessageFirst(OSError):
    """Shows the message warmstart built (which names the path and the reason) instead of
    OSError's default form, which repeats the path and prints ``[Errno None]`` without errno."""

    def __str__(self) -> str:
        return str(self.strerror if self.errno is not None else self.args[0])


class StoreIOError(StoreError, _MessageFirst):
    """A file system operation of the store failed, on the path in ``filename`` with ``errno``."""


class RegistryError(WarmstartError):
    """A registry or HTTP request failed; ``status`` has the HTTP status when there was one."""

    status: int | None
    url: str
    registry: str
    repository: str
    digest: str | None


class InvalidReferenceError(RegistryError, ValueError):
    """An image reference, URL or platform string is invalid."""


class RegistryAuthError(RegistryError, PermissionError):
    """The registry refused the credentials, or asked for credentials that are not configured."""


class RegistryNotFoundError(RegistryError, LookupError):
    """The registry has no such repository, manifest or blob."""


class PlatformNotFoundError(RegistryError, LookupError):
    """An image index has no manifest for the requested platform.

    ``LayerStore.resolve_platform`` raises it too, for an index in the store, with ``status`` None.
    """


class RegistryTimeoutError(RegistryError, TimeoutError):
    """A connection delivered no bytes for longer than the stall timeout."""


class RegistryConnectionError(RegistryError, ConnectionError):
    """A connection to the registry or storage host failed."""


class RegistryProtocolError(RegistryError):
    """The server sent something the OCI distribution protocol does not allow."""


class UnpackError(WarmstartError):
    """Unpacking an image from the store into a directory failed; nothing was published."""


class UnsafeEntryError(UnpackError, ValueError):
    """A layer entry would write outside the target or create a device node without root."""

    layer: str
    entry: str
    reason: str


class InvalidLayerError(UnpackError, ValueError):
    """A layer is corrupt, has an unsupported media type, or its bytes show another compression."""

    layer: str


class DiffIdMismatchError(UnpackError, ValueError):
    """A layer's uncompressed tar stream does not hash to the diff_id in the image config."""

    layer: str
    expected: str
    actual: str


class InvalidImageError(UnpackError, ValueError):
    """A manifest or image config lacks what an unpack needs (layers, ``rootfs.diff_ids``)."""

    image: str


class UnpackTargetError(UnpackError, _MessageFirst, FileExistsError):
    """The target directory contains another image or files warmstart did not write."""


class UnpackIOError(UnpackError, _MessageFirst):
    """A file system operation of an unpack failed, on the path in ``filename`` with ``errno``."""

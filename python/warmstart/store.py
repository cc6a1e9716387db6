"""The layer store: verified, content-addressed OCI blobs on local disk."""

from __future__ import annotations

import os
from typing import BinaryIO

from warmstart import _native

__all__ = ["LayerStore"]


class LayerStore(_native.LayerStore):
    """A content-addressed store of OCI blobs rooted at a directory, in OCI image layout format.

    Every blob under ``blobs/`` is complete and verified: writes go to ``ingest/`` and are moved
    into place only after their size and digest are checked. Several threads and processes may
    use one store at once. Every method releases the GIL while it hashes or does I/O.

    Raises ``StoreError`` subclasses from :mod:`warmstart.errors`.
    """

    def open(self, digest: str) -> BinaryIO:
        """Open a committed blob for reading in binary mode.

        Raises ``BlobNotFoundError`` when the blob is not in the store.
        """
        return open(self.path(digest), "rb")

    def __fspath__(self) -> str:
        return os.fspath(self.root)

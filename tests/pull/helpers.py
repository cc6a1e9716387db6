"""Shared helpers for the pull tests."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from tests.registry.layout import tar_layer
from warmstart import BlobReport, LayerStore, PullReport


def pull(store: LayerStore, reference: str, **options: Any) -> PullReport:
    """Run ``store.pull`` to completion from synchronous test code."""

    async def run() -> PullReport:
        return await store.pull(reference, **options)

    return asyncio.run(run())


def fetch(store: LayerStore, url: str, **options: Any) -> BlobReport:
    async def run() -> BlobReport:
        return await store.fetch(url, **options)

    return asyncio.run(run())


def real_file_layer(limit: int) -> bytes:
    """Return a tar layer of real files from this machine, about `limit` bytes."""
    files: dict[str, bytes] = {}
    total = 0
    for directory, _, names in sorted(os.walk("/usr/lib/python3.11")):
        for name in sorted(names):
            path = Path(directory) / name
            if not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
            files[str(path).lstrip("/")] = data
            total += len(data)
            if total >= limit:
                return tar_layer(files)
    return tar_layer(files)


def ingest_leftovers(store: LayerStore) -> list[str]:
    return sorted(path.name for path in (Path(store.root) / "ingest").iterdir())

"""Serve a layer store as an OCI registry mirror that pulls through to upstream registries.

See ``docs/mirror.md``. ``Mirror`` is the aiohttp application and ``serve`` runs it on a local
address. ``prefetch``, ``prefetch_mirror`` and ``ImagePrefetcher`` warm a store or a mirror
ahead of a scale-out.
"""

from __future__ import annotations

from warmstart.mirror.app import Mirror
from warmstart.mirror.prefetch import ImagePrefetcher, prefetch, prefetch_mirror
from warmstart.mirror.server import RunningMirror, serve
from warmstart.mirror.upstream import Upstream

__all__ = [
    "ImagePrefetcher",
    "Mirror",
    "RunningMirror",
    "Upstream",
    "prefetch",
    "prefetch_mirror",
    "serve",
]

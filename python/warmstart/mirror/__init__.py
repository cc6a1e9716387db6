"""Serve a layer store as an OCI registry mirror that pulls through to upstream registries.

See ``docs/mirror.md``. ``Mirror`` is the aiohttp application, ``serve`` runs it on a local
address, and ``prefetch`` and ``ScaleUpPrefetcher`` warm a store ahead of a scale-out.
"""

from __future__ import annotations

from warmstart.mirror.app import Mirror
from warmstart.mirror.prefetch import ScaleUpPrefetcher, prefetch
from warmstart.mirror.server import RunningMirror, serve
from warmstart.mirror.upstream import Upstream

__all__ = ["Mirror", "RunningMirror", "ScaleUpPrefetcher", "Upstream", "prefetch", "serve"]

"""The clock ``warmstart serve`` runs its engine on."""

from __future__ import annotations

import asyncio
import time


class WallClock:
    """Unix time in seconds (``time.time()``) and ``asyncio.sleep``.

    Producers stamp samples with Unix time, and the engine rejects samples more than
    ``IngestConfig.max_skew_s`` (900 s) from its own clock, so a served engine reads the same
    time base. Decisions' ``at`` is then Unix time too.
    """

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.time()))

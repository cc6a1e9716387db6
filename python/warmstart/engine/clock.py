"""Clocks: the only place the engine reads time.

Every timestamp is in seconds. ``WallClock`` reads Unix time (``time.time()``) and is the
engine's default live clock, because windows use event time: producers stamp samples with Unix
time, and the engine compares those timestamps with its own ``now``. ``MonotonicClock`` reads
``time.monotonic()`` (seconds since an arbitrary point, usually boot) and suits only producers
that stamp samples with the same monotonic clock. ``FakeClock`` only moves when a test or a
replay driver advances it, so the same input at the same clock readings gives the same
decisions.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """A source of time in seconds and a way to wait for a deadline on it."""

    def now(self) -> float:
        """Return the current time in seconds."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Wait until ``now() >= deadline`` (seconds on this clock)."""
        ...


class WallClock:
    """The live clock: Unix time in seconds (``time.time()``) and ``asyncio.sleep``.

    Unix time can step forwards or backwards when the system clock is set; docs/engine.md
    describes what the engine does then. ``sleep_until`` converts the deadline to a delay once,
    so a step during the sleep neither shortens nor lengthens it.
    """

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.time()
        await asyncio.sleep(max(0.0, delay))


class MonotonicClock:
    """``time.monotonic()`` seconds and ``asyncio.sleep``, for producers stamping that clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        await asyncio.sleep(max(0.0, delay))


class FakeClock:
    """A clock that moves only when ``advance`` or ``set`` is called.

    ``sleep_until`` waiters wake, in deadline order, when the clock reaches their deadline.
    Waking a waiter only schedules it, so call ``await asyncio.sleep(0)`` (or
    ``warmstart.testing.settle``) after advancing to let woken tasks run.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (at least 0) and wake due waiters."""
        if not seconds >= 0.0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self.set(self._now + seconds)

    def set(self, now: float) -> None:
        """Move the clock to ``now`` seconds, which must not be earlier than the current time."""
        if not now >= self._now:
            raise ValueError(f"clock cannot move backwards: {now!r} < {self._now!r}")
        self._now = float(now)
        while self._waiters and self._waiters[0][0] <= self._now:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)

    @property
    def pending_sleepers(self) -> int:
        """Number of ``sleep_until`` calls still waiting."""
        return sum(1 for _, _, future in self._waiters if not future.done())

    def next_deadline(self) -> float | None:
        """Return the earliest deadline a waiter is sleeping until, or None."""
        for deadline, _, future in sorted(self._waiters):
            if not future.done():
                return deadline
        return None

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (deadline, next(self._order), future))
        await future

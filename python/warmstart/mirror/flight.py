"""Single flight: concurrent requests for one key share one running task."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Run at most one task per key; later callers for the key await the running task.

    A caller that is cancelled stops waiting but does not cancel the shared task, because other
    callers may still want its result. ``close`` cancels every running task.
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._running)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        """Return the result of ``work()``, or of the task already running for ``key``."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._running[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: Hashable, task: asyncio.Future[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        # Retrieve the exception so a task whose callers all left does not log it as unseen.
        if not task.cancelled():
            task.exception()

    async def close(self) -> None:
        """Cancel every running task and wait for them to finish."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""``MetricStream``: send metric samples to ``warmstart serve`` over its websocket.

The stream batches samples into columnar frames, keeps at most ``max_in_flight`` frames
unacknowledged, and reconnects with exponential backoff. Delivery is at least once: a batch
sent but not acknowledged when the connection drops is sent again after reconnecting, so the
server may count it twice. A sample is never lost silently. Every sample ends in ``stats`` as
accepted, rejected (by the server's reason) or dropped (by the client's reason), and
``on_drop`` is called for drops::

    async with MetricStream("ws://127.0.0.1:8080/v1/stream") as stream:
        stream.add("llama-8b", "concurrency", "pod-a", time.time(), 7.0)
    print(stream.stats)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import numbers
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp

from warmstart.engine import InstanceEvent

logger = logging.getLogger("warmstart.client")

# Client-side drop reasons.
BUFFER_FULL = "buffer_full"
NOT_SENT_BEFORE_CLOSE = "not_sent_before_close"
UNACKNOWLEDGED_AT_CLOSE = "unacknowledged_at_close"

_Sample = tuple[str, str, str, float, float]


@dataclass(slots=True)
class StreamStats:
    """What happened to the samples given to a ``MetricStream``."""

    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    events_accepted: int = 0
    events_rejected: Counter[str] = field(default_factory=Counter)
    batches_sent: int = 0
    reconnects: int = 0
    slow_downs: int = 0


@dataclass(slots=True)
class _Batch:
    text: str
    samples: int


class MetricStream:
    """An async context manager that streams samples to ``url`` (``ws://.../v1/stream``).

    ``batch_size`` samples go in one frame; a smaller batch is sent once no sample arrived for
    ``flush_interval_s`` seconds. ``max_buffered`` samples wait while disconnected; beyond
    that, new samples are dropped with reason ``buffer_full``. Reconnect delays start at
    ``backoff_initial_s`` seconds and double up to ``backoff_max_s``, with jitter. On exit the
    stream waits up to ``close_timeout_s`` seconds for the buffer to be sent and acknowledged.
    ``subscribe``: endpoint names, or ``"all"``, whose decisions ``decisions()`` yields.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        batch_size: int = 1000,
        flush_interval_s: float = 0.05,
        max_buffered: int = 100_000,
        max_in_flight: int = 16,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 10.0,
        close_timeout_s: float = 10.0,
        subscribe: Iterable[str] | str | None = None,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        if batch_size < 1 or max_buffered < 1 or max_in_flight < 1:
            raise ValueError("batch_size, max_buffered and max_in_flight must be at least 1")
        self.url = url
        self.stats = StreamStats()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_buffered = max_buffered
        self._max_in_flight = max_in_flight
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._close_timeout_s = close_timeout_s
        self._subscribe = (
            None if subscribe is None else "all" if subscribe == "all" else sorted(subscribe)
        )
        self._on_drop = on_drop
        self._buffer: deque[_Sample] = deque()
        self._events: deque[dict[str, str]] = deque()
        self._in_flight: dict[int, _Batch] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._closing = False
        self._decisions: asyncio.Queue[dict[str, Any]] = asyncio.Queue(1024)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    # -- producer API ------------------------------------------------------------------------

    def add(
        self, endpoint: str, metric: str, instance: str, timestamp_s: float, value: float
    ) -> bool:
        """Buffer one sample (event time in seconds); return False if it was dropped.

        Raise ``TypeError`` for a name that is not a string or a time or value that is not a
        real number (a ``Decimal``, a string), and ``ValueError`` for an integer beyond the
        range of a float. NaN and infinity are sent, and the server counts them as rejected.
        """
        for key, name in (("endpoint", endpoint), ("metric", metric), ("instance", instance)):
            if not isinstance(name, str):
                raise TypeError(f"{key} must be a string, got {name!r}")
        # Checked here because a value json cannot encode would fail the whole batch later.
        timestamp_s = _real(timestamp_s, "timestamp_s")
        value = _real(value, "value")
        if len(self._buffer) >= self._max_buffered:
            self._drop(BUFFER_FULL, 1)
            return False
        self._buffer.append((endpoint, metric, instance, timestamp_s, value))
        if len(self._buffer) >= self._batch_size:
            self._changed.set()
        return True

    def instance_event(self, endpoint: str, instance: str, event: InstanceEvent) -> None:
        """Queue an instance lifecycle event; events are sent before the next sample batch."""
        self._events.append({"endpoint": endpoint, "instance": instance, "event": event.value})
        self._changed.set()

    @property
    def pending(self) -> int:
        """Samples buffered or sent and not yet acknowledged."""
        return len(self._buffer) + sum(b.samples for b in self._in_flight.values())

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every buffered sample is acknowledged; return False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while self.pending or self._events:
            self._changed.set()
            if deadline is not None and loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def decisions(self) -> AsyncIterator[dict[str, Any]]:
        """Yield decision frames of the subscribed endpoints (see ``subscribe``)."""
        while True:
            yield await self._decisions.get()

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> MetricStream:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run(), name="warmstart-metric-stream")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Send what is buffered (up to ``close_timeout_s``), then report what was not."""
        if self._closing:
            return
        try:
            await self.flush(self._close_timeout_s)
        finally:
            self._closing = True
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            unsent = len(self._buffer)
            unacknowledged = sum(b.samples for b in self._in_flight.values())
            self._buffer.clear()
            self._in_flight.clear()
            self._drop(NOT_SENT_BEFORE_CLOSE, unsent)
            self._drop(UNACKNOWLEDGED_AT_CLOSE, unacknowledged)
            if self._session is not None:
                await self._session.close()
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError

    # -- connection loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._session is not None
        delay_s = self._backoff[0]
        attempt = 0
        while True:
            try:
                async with self._session.ws_connect(
                    self.url, headers=self._headers, heartbeat=30.0, max_msg_size=0
                ) as ws:
                    if attempt:
                        self.stats.reconnects += 1
                        logger.info("reconnected to %s after %d attempt(s)", self.url, attempt)
                    attempt = 0
                    delay_s = self._backoff[0]
                    self.connected.set()
                    await self._serve(ws)
                    reason = f"closed with {ws.close_code}"
            except aiohttp.WSServerHandshakeError as error:
                reason = f"handshake failed with HTTP {error.status}"
            except (aiohttp.ClientError, OSError) as error:
                reason = f"{type(error).__name__}: {error}"
            self.connected.clear()
            attempt += 1
            wait_s = delay_s * random.uniform(0.5, 1.0)
            logger.warning(
                "connection to %s lost (%s); %d sample(s) pending, retrying in %.2fs",
                self.url,
                reason,
                self.pending,
                wait_s,
            )
            await asyncio.sleep(wait_s)
            delay_s = min(delay_s * 2, self._backoff[1])

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Resend unacknowledged batches, then send and read until the socket closes."""
        reader = asyncio.create_task(self._read(ws), name="warmstart-metric-stream-reader")
        try:
            if self._subscribe is not None:
                endpoints = None if self._subscribe == "all" else self._subscribe
                await ws.send_str(json.dumps({"type": "subscribe", "endpoints": endpoints}))
            for batch in list(self._in_flight.values()):
                await ws.send_str(batch.text)
            await self._send_loop(ws, reader)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _send_loop(
        self, ws: aiohttp.ClientWebSocketResponse, reader: asyncio.Task[None]
    ) -> None:
        loop = asyncio.get_running_loop()
        last_send = loop.time()
        while not reader.done():
            if self._events:
                events = list(self._events)
                self._events.clear()
                frame_id = next(self._ids)
                text = json.dumps({"type": "instance_events", "id": frame_id, "events": events})
                self._in_flight[frame_id] = _Batch(text, 0)
                await ws.send_str(text)
                continue
            room = len(self._in_flight) < self._max_in_flight
            due = loop.time() - last_send >= self._flush_interval_s
            if room and self._buffer and (len(self._buffer) >= self._batch_size or due):
                await ws.send_str(self._next_batch())
                last_send = loop.time()
                continue
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._flush_interval_s)

    def _next_batch(self) -> str:
        count = min(self._batch_size, len(self._buffer))
        samples = [self._buffer.popleft() for _ in range(count)]
        endpoints, metrics, instances, timestamps, values = (
            list(c) for c in zip(*samples, strict=True)
        )
        frame_id = next(self._ids)
        text = json.dumps(
            {
                "type": "columns",
                "id": frame_id,
                "endpoint": _compact(endpoints),
                "metric": _compact(metrics),
                "instance": _compact(instances),
                "timestamp_s": timestamps,
                "value": values,
            }
        )
        self._in_flight[frame_id] = _Batch(text, count)
        self.stats.batches_sent += 1
        return text

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            kind = frame.get("type")
            if kind == "ack":
                self._on_ack(frame)
            elif kind == "error":
                self._on_error(frame)
            elif kind == "decision":
                if self._decisions.full():
                    self._decisions.get_nowait()
                self._decisions.put_nowait(frame)
            elif kind == "slow_down":
                self.stats.slow_downs += 1
            self._changed.set()

    def _on_ack(self, frame: dict[str, Any]) -> None:
        batch = self._in_flight.pop(frame.get("id"), None)  # type: ignore[arg-type]
        if batch is None:
            return
        if not batch.samples:
            self.stats.events_accepted += int(frame.get("accepted", 0))
            self.stats.events_rejected.update(frame.get("rejected") or {})
            return
        self.stats.accepted += int(frame.get("accepted", 0))
        self.stats.rejected.update(frame.get("rejected") or {})

    def _on_error(self, frame: dict[str, Any]) -> None:
        code = frame.get("code", "error")
        if code in ("samples_rejected", "events_rejected"):
            logger.debug("server rejected part of a batch: %s", frame.get("message"))
            return  # the ack that follows counts them
        logger.warning("server error %s: %s", code, frame.get("message"))
        if code == "shutting_down":
            return  # kept in flight, so it is sent again after reconnecting
        batch = self._in_flight.pop(frame.get("id"), None)  # type: ignore[arg-type]
        if batch is not None and batch.samples:
            self.stats.rejected[code] += batch.samples

    def _drop(self, reason: str, count: int) -> None:
        if count <= 0:
            return
        first = self.stats.dropped[reason] == 0
        self.stats.dropped[reason] += count
        if first or self._closing:
            logger.warning("dropped %d sample(s): %s", count, reason)
        if self._on_drop is not None:
            self._on_drop(reason, count)


def _real(number: object, key: str) -> float:
    """Return ``number`` as a float; raise ``TypeError`` if it is not a real number."""
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise TypeError(f"{key} must be a real number, got {number!r}")
    try:
        return float(number)
    except OverflowError:
        # The number itself may have too many digits to print.
        raise ValueError(f"{key} is beyond the range of a float (about 1.8e308)") from None


def _compact(column: list[str]) -> str | list[str]:
    """Send one name instead of a column when every row has the same name."""
    first = column[0]
    return first if column.count(first) == len(column) else column

"""The service's shared state: connections, the ingest queue, subscriptions and counters.

Data flow and the bounds that keep memory bounded:

- A connection's handler parses a frame and puts the batch on one ingest queue
  (``ingest_queue_batches`` batches for all connections). When the queue is full the handler
  sends one ``slow_down`` frame and waits, so it stops reading its socket and TCP pushes back
  on the client.
- One ingest task owned by the hub moves batches from the queue into the engine and hands each
  reply to its connection.
- Each connection has one writer task, which sends replies first and decisions second. A
  connection may have at most ``max_unanswered_frames`` frames whose reply is not sent yet;
  at that limit its handler stops reading, so a client that never reads its acks only stalls
  itself.
- Decisions are fanned out without waiting: each subscriber keeps the newest
  ``subscriber_queue`` decisions and counts the ones it dropped, so a slow subscriber never
  blocks ingest or other subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, web

from warmstart.engine import (
    Decision,
    Engine,
    EngineClosedError,
    RejectReason,
    UnknownEndpointError,
)
from warmstart.server.config import ServerSettings
from warmstart.server.protocol import (
    FrameId,
    InstanceEvents,
    SampleBatch,
    ack_frame,
    decision_document,
    error_frame,
)

logger = logging.getLogger("warmstart.server")

# Seconds between two log lines about the same kind of rejected batch.
_REJECT_LOG_INTERVAL_S = 10.0


class Connection:
    """One websocket client: its reply queue, decision subscription and writer task."""

    def __init__(self, conn_id: int, remote: str, ws: web.WebSocketResponse, hub: Hub) -> None:
        self.id = conn_id
        self.remote = remote
        self.ws = ws
        self._hub = hub
        settings = hub.settings
        self.credits = asyncio.Semaphore(settings.max_unanswered_frames)
        self._replies: deque[tuple[str, ...]] = deque()
        self._decisions: deque[str] = deque(maxlen=settings.subscriber_queue)
        self.dropped_decisions = 0
        # Decisions wanted: every endpoint except ``excluded`` when ``subscribed_all``, plus
        # the endpoints in ``included``.
        self.subscribed_all = False
        self.included: set[str] = set()
        self.excluded: set[str] = set()
        self.slowed = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._write(), name=f"warmstart-ws-writer-{conn_id}")

    def reply(self, *frames: str) -> None:
        """Queue the reply to one frame; the writer returns one credit once it is sent."""
        self._replies.append(frames)
        self._idle.clear()
        self._wake.set()

    def notify(self, frame: str) -> None:
        """Queue a frame that answers no request (it does not return a credit)."""
        self._replies.append((frame, ""))
        self._idle.clear()
        self._wake.set()

    def wants(self, endpoint: str) -> bool:
        """Return True if this connection subscribed to decisions of ``endpoint``."""
        if endpoint in self.included:
            return True
        return self.subscribed_all and endpoint not in self.excluded

    def subscribe(self, endpoints: frozenset[str] | None) -> None:
        """Add ``endpoints`` to the subscription (None: every endpoint, including later ones)."""
        if endpoints is None:
            self.subscribed_all = True
            self.excluded.clear()
        else:
            self.included |= endpoints
            self.excluded -= endpoints

    def unsubscribe(self, endpoints: frozenset[str] | None) -> None:
        """Remove ``endpoints`` from the subscription (None: end it)."""
        if endpoints is None:
            self.subscribed_all = False
            self.included.clear()
            self.excluded.clear()
        else:
            self.included -= endpoints
            self.excluded |= endpoints

    def push_decision(self, text: str) -> None:
        """Queue a decision, dropping the oldest queued one if the subscriber is behind."""
        if len(self._decisions) == self._decisions.maxlen:
            self.dropped_decisions += 1
            self._hub.count_dropped_decision()
        self._decisions.append(text)
        self._idle.clear()
        self._wake.set()

    async def flushed(self, timeout_s: float) -> None:
        """Wait until every queued reply and decision is sent, or ``timeout_s`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def close(self) -> None:
        """Stop the writer task; queued frames that were not sent are discarded."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise asyncio.CancelledError

    async def _write(self) -> None:
        ws = self.ws
        reported_drops = 0
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._replies or self._decisions:
                    if self._replies:
                        frames = self._replies.popleft()
                        for frame in frames:
                            if frame:
                                await ws.send_str(frame)
                        if frames[-1]:
                            self.credits.release()
                        continue
                    if self.dropped_decisions != reported_drops:
                        count = self.dropped_decisions - reported_drops
                        reported_drops = self.dropped_decisions
                        await ws.send_str(json.dumps({"type": "decisions_dropped", "count": count}))
                    await ws.send_str(self._decisions.popleft())
                self._idle.set()
        except ConnectionResetError:
            # The peer went away; the handler sees the closed socket and disconnects.
            self._idle.set()


@dataclass(slots=True)
class Counters:
    """Totals exported on ``/metrics``."""

    samples_accepted: int = 0
    samples_rejected: Counter[str] = field(default_factory=Counter)
    frames_rejected: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    decisions_dropped: int = 0
    connections_opened: int = 0
    ingest_waits: int = 0
    unauthorized: int = 0


class Hub:
    """State shared by the handlers of one application; owns the ingest task."""

    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.counters = Counters()
        self.connections: dict[int, Connection] = {}
        self.documents: dict[str, dict[str, Any] | None] = {}
        self.draining = False
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._history: dict[str, deque[dict[str, Any]]] = {}
        self._queue: asyncio.Queue[tuple[Connection, SampleBatch | InstanceEvents]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_reject_log: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        engine.add_callback(self.on_decision)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the ingest task on the running loop."""
        self._queue = asyncio.Queue(self.settings.ingest_queue_batches)
        self._task = asyncio.create_task(self._ingest_loop(), name="warmstart-ingest")

    async def drain(self) -> None:
        """Stop taking batches, finish the queued ones, send their replies, close with 1001."""
        self.draining = True
        timeout_s = self.settings.shutdown_timeout_s
        if self._queue is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout_s)
        connections = list(self.connections.values())
        await asyncio.gather(*(c.flushed(timeout_s) for c in connections))
        await asyncio.gather(
            *(
                c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
                for c in connections
            ),
            return_exceptions=True,
        )

    async def close(self) -> None:
        """Stop the ingest task and every writer task. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for connection in list(self.connections.values()):
            await connection.close()
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise asyncio.CancelledError

    # -- connections -------------------------------------------------------------------------

    def connect(self, ws: web.WebSocketResponse, remote: str) -> Connection:
        """Register a new websocket client and start its writer."""
        connection = Connection(next(self._ids), remote, ws, self)
        self.connections[connection.id] = connection
        self.counters.connections_opened += 1
        logger.info("client %d connected from %s", connection.id, remote)
        return connection

    async def disconnect(self, connection: Connection) -> None:
        """Unregister a client and stop its writer."""
        self.connections.pop(connection.id, None)
        await connection.close()
        logger.info(
            "client %d disconnected (close code %s)", connection.id, connection.ws.close_code
        )

    async def submit(self, connection: Connection, item: SampleBatch | InstanceEvents) -> None:
        """Queue a batch for the engine; wait, and so stop reading, while the queue is full."""
        assert self._queue is not None, "hub not started"
        if self._queue.full():
            self.counters.ingest_waits += 1
            if not connection.slowed:
                connection.slowed = True
                connection.notify(
                    json.dumps({"type": "slow_down", "queued_batches": self._queue.qsize()})
                )
        await self._queue.put((connection, item))

    # -- ingestion ---------------------------------------------------------------------------

    async def _ingest_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            connection, item = await queue.get()
            try:
                if isinstance(item, SampleBatch):
                    connection.reply(*self.ingest(item, connection.id))
                else:
                    connection.reply(self.apply_events(item))
                if connection.slowed and not queue.full():
                    connection.slowed = False
            except EngineClosedError:
                connection.reply(error_frame(item.frame_id, "shutting_down", "engine is stopped"))
            except Exception:
                logger.exception("ingesting a batch from client %d failed", connection.id)
                connection.reply(
                    error_frame(item.frame_id, "internal_error", "the server failed the batch")
                )
            finally:
                queue.task_done()

    def ingest(self, batch: SampleBatch, client: int | str = "-") -> tuple[str, ...]:
        """Ingest one batch into the engine; return the reply frames (an error, then the ack)."""
        engine = self.engine
        rows = len(batch)
        sids = self._resolve(batch)
        for row in batch.problems:
            sids[row] = -1
        ok = sids >= 0
        # Flushing first means the reject totals move only by this batch's rejections.
        engine.flush()
        before = engine.rejects.totals
        accepted = engine.ingest_batch(sids[ok], batch.timestamps_s[ok], batch.values[ok])
        after = engine.rejects.totals
        rejected: Counter[str] = Counter(batch.problems.values())
        for engine_reason in RejectReason:
            count = after[engine_reason] - before[engine_reason]
            if count:
                rejected[engine_reason.value] += count
        self.counters.samples_accepted += accepted
        self.counters.samples_rejected.update(rejected)
        ack = ack_frame(batch.frame_id, accepted, rejected)
        if not rejected:
            return (ack,)
        details = "; ".join(
            f"{reason}: {count}"
            + (f" (first {batch.details[reason]})" if reason in batch.details else "")
            for reason, count in sorted(rejected.items())
        )
        message = f"rejected {sum(rejected.values())} of {rows} samples: {details}"
        self.log_rejected("samples_rejected", client, message)
        return (error_frame(batch.frame_id, "samples_rejected", message), ack)

    def _resolve(self, batch: SampleBatch) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Map each row's names to a series id; unknown names are marked as problems."""
        engine = self.engine
        rows = len(batch)
        known = set(engine.endpoints)
        cache: dict[tuple[str, str, str], int] = {}
        sids = np.full(rows, -1, dtype=np.int64)
        single = all(isinstance(c, str) for c in (batch.endpoints, batch.metrics, batch.instances))
        for row in range(min(rows, 1) if single else rows):
            if not single and row in batch.problems:
                continue
            key = (
                _at(batch.endpoints, row),
                _at(batch.metrics, row),
                _at(batch.instances, row),
            )
            sid = cache.get(key)
            if sid is None:
                sid = self._series_id(key, known)
                cache[key] = sid
            if sid < 0:
                reason = "unknown_endpoint" if key[0] not in known else "unknown_metric"
                name = key[0] if key[0] not in known else f"{key[0]}/{key[1]}"
                if single:
                    for each in range(rows):
                        batch.reject(each, reason, f"{name!r} is not configured")
                else:
                    batch.reject(row, reason, f"{name!r} is not configured")
            sids[row] = sid
        if single and rows:
            sids[:] = sids[0]
        return sids

    def _series_id(self, key: tuple[str, str, str], known: set[str]) -> int:
        if key[0] not in known:
            return -1
        try:
            return self.engine.series_id(*key)
        except UnknownEndpointError:
            return -1

    def apply_events(self, events: InstanceEvents) -> str:
        """Apply instance events; return the ack, with unknown endpoints counted as rejected."""
        accepted = 0
        rejected: Counter[str] = Counter()
        for endpoint, instance, event in events.events:
            try:
                self.engine.instance_event(endpoint, instance, event)
            except UnknownEndpointError:
                rejected["unknown_endpoint"] += 1
            else:
                accepted += 1
        return ack_frame(events.frame_id, accepted, rejected)

    def log_rejected(self, kind: str, client: int | str, message: str) -> None:
        """Log a rejected frame or sample, at most once per kind every 10 seconds."""
        now = time.monotonic()
        last = self._last_reject_log.get(kind)
        if last is not None and now - last < _REJECT_LOG_INTERVAL_S:
            self._suppressed[kind] += 1
            return
        self._last_reject_log[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        more = f" ({suppressed} similar since the last report)" if suppressed else ""
        logger.warning("client %s: %s%s", client, message, more)

    # -- decisions ---------------------------------------------------------------------------

    def on_decision(self, decision: Decision) -> None:
        """Record a decision and queue it for every subscriber; never waits."""
        if self._closed:
            return
        document = decision_document(decision, next(self._seq), time.time())
        self.counters.decisions[decision.endpoint] += 1
        history = self._history.get(decision.endpoint)
        if history is None:
            history = deque(maxlen=self.settings.decision_history)
            self._history[decision.endpoint] = history
        history.append(document)
        text = json.dumps({"type": "decision", **document})
        for connection in self.connections.values():
            if connection.wants(decision.endpoint):
                connection.push_decision(text)

    def history(self, endpoint: str, since: int) -> list[dict[str, Any]]:
        """Return the kept decisions of ``endpoint`` with a sequence number above ``since``."""
        return [d for d in self._history.get(endpoint, ()) if d["seq"] > since]

    def forget(self, endpoint: str) -> None:
        """Drop the decision history of a removed endpoint."""
        self._history.pop(endpoint, None)

    def count_dropped_decision(self) -> None:
        """Count one decision a slow subscriber did not receive."""
        self.counters.decisions_dropped += 1


def subscribed(frame_id: FrameId, connection: Connection) -> str:
    """Build the reply to ``subscribe`` and ``unsubscribe``: the subscription now in force."""
    return json.dumps(
        {
            "type": "subscribed",
            "id": frame_id,
            "all": connection.subscribed_all,
            "endpoints": sorted(connection.included),
            "excluded": sorted(connection.excluded) if connection.subscribed_all else [],
        }
    )


def _at(column: str | list[str], row: int) -> str:
    return column if isinstance(column, str) else column[row]

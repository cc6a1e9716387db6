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
  itself. When one send has waited ``send_timeout_s`` seconds for the client to read, the
  connection is aborted, so a client that stopped reading or vanished does not hold its
  handler forever.
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
import numpy.typing as npt
from aiohttp import WSCloseCode, web

from warmstart.engine import (
    Decision,
    Engine,
    EngineClosedError,
    RejectReason,
    TooManySeriesError,
    UnknownEndpointError,
)
from warmstart.engine.samples import REASON_CODES
from warmstart.server.config import ServerSettings
from warmstart.server.errors import FrameError
from warmstart.server.protocol import (
    FrameId,
    InstanceEvents,
    SampleBatch,
    ack_frame,
    decision_document,
    error_frame,
    short_json,
)

logger = logging.getLogger("warmstart.server")

# Endpoint names one connection's subscription may list (or exclude), so that repeated
# subscribe frames cannot grow its memory without bound.
MAX_SUBSCRIPTION_NAMES = 10_000

# Engine reject reasons about a sample's time; the others are about its value.
_TIME_REASONS = frozenset(
    (RejectReason.INVALID_TIMESTAMP, RejectReason.TOO_OLD, RejectReason.TOO_FAR_IN_FUTURE)
)

# Seconds between two log lines about the same kind of rejected batch.
_REJECT_LOG_INTERVAL_S = 10.0


class Connection:
    """One websocket client: its reply queue, decision subscription and writer task."""

    def __init__(
        self,
        conn_id: int,
        remote: str,
        ws: web.WebSocketResponse,
        hub: Hub,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.id = conn_id
        self.remote = remote
        self.ws = ws
        self._hub = hub
        self._transport = transport
        # True once the writer stopped: the peer is gone or the connection was aborted.
        self.lost = False
        # True while a send waits to hand its frame to the socket.
        self._sending = False
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

    async def take_credit(self) -> bool:
        """Wait until one more frame may be read; return False once the connection is lost.

        A credit comes back when the reply to an earlier frame is sent, or when the writer
        stops because the peer is gone or did not read for ``send_timeout_s`` seconds.
        """
        await self.credits.acquire()
        return not self.lost

    def abort(self) -> None:
        """Close the connection's socket at once, discarding unsent data."""
        if self._transport is not None:
            # abort() also ends a close() that waits for unsent data the peer never reads.
            self._transport.abort()

    @property
    def stalled(self) -> bool:
        """True while a frame is being sent, which lasts as long as the peer does not read."""
        return self._sending

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
        """Add ``endpoints`` to the subscription (None: every endpoint, including later ones).

        Raise ``FrameError`` if the subscription would name more than
        ``MAX_SUBSCRIPTION_NAMES`` endpoints.
        """
        if endpoints is not None:
            _check_subscription_size(self.included | endpoints)
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
            if self.subscribed_all:
                _check_subscription_size(self.excluded | endpoints)
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

    async def close_socket(self, timeout_s: float) -> None:
        """Close with 1001 (going away); abort the socket if that takes over ``timeout_s`` s.

        The close frame waits like any other frame for a client that does not read.
        """
        try:
            await asyncio.wait_for(
                self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down"),
                timeout_s,
            )
        except TimeoutError:
            logger.warning(
                "client %d: close timed out after %.1f s; aborting the connection",
                self.id,
                timeout_s,
            )
            self.abort()
        except ConnectionError:
            # The peer went away first, so the handler's read ends and it disconnects.
            pass

    async def close(self) -> None:
        """Stop the writer task; queued frames that were not sent are discarded."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise asyncio.CancelledError

    async def _send(self, frame: str) -> None:
        loop = asyncio.get_running_loop()
        self._sending = True
        # A timer, not wait_for, because it costs no task per frame. Aborting the transport
        # makes the blocked send, and the handler's read, end with the connection lost.
        watchdog = loop.call_later(self._hub.settings.send_timeout_s, self._on_send_timeout)
        try:
            await self.ws.send_str(frame)
        finally:
            watchdog.cancel()
            self._sending = False

    def _on_send_timeout(self) -> None:
        logger.warning(
            "client %d: a frame waited %.1f s for the client to read it; closing the connection",
            self.id,
            self._hub.settings.send_timeout_s,
        )
        self.abort()

    async def _write(self) -> None:
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
                                await self._send(frame)
                        if frames[-1]:
                            self.credits.release()
                        continue
                    if self.dropped_decisions != reported_drops:
                        count = self.dropped_decisions - reported_drops
                        reported_drops = self.dropped_decisions
                        await self._send(json.dumps({"type": "decisions_dropped", "count": count}))
                    await self._send(self._decisions.popleft())
                self._idle.set()
        except ConnectionResetError:
            # The peer went away; the handler sees the closed socket and disconnects.
            pass
        finally:
            # Whatever stopped the writer, no reply will be sent any more. A handler waiting
            # for a credit must wake up and see ``lost``, or it would wait forever.
            self.lost = True
            self._idle.set()
            self.credits.release()


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
            *(c.close_socket(timeout_s) for c in connections), return_exceptions=True
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

    def connect(
        self,
        ws: web.WebSocketResponse,
        remote: str,
        transport: asyncio.Transport | None = None,
    ) -> Connection:
        """Register a new websocket client and start its writer.

        ``transport`` is the client's socket, which is aborted when the client stops reading.
        """
        connection = Connection(next(self._ids), remote, ws, self, transport)
        self.connections[connection.id] = connection
        self.counters.connections_opened += 1
        logger.info("client %d connected from %s", connection.id, remote)
        return connection

    async def disconnect(self, connection: Connection) -> None:
        """Unregister a client and stop its writer."""
        self.connections.pop(connection.id, None)
        if connection.stalled:
            # A send is still in progress, and a graceful close would wait behind it.
            connection.abort()
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
                    connection.reply(*self.apply_events(item, connection.id))
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
        codes = engine.ingest_batch_reasons(sids[ok], batch.timestamps_s[ok], batch.values[ok])
        accepted = int(np.count_nonzero(codes < 0))
        rejected: Counter[str] = Counter(batch.problems.values())
        if accepted < codes.size:
            self._name_engine_rejects(batch, np.flatnonzero(ok), codes, rejected)
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

    def _name_engine_rejects(
        self,
        batch: SampleBatch,
        rows: npt.NDArray[np.intp],
        codes: npt.NDArray[np.int8],
        rejected: Counter[str],
    ) -> None:
        """Count the engine's rejections by reason and keep the first row of each."""
        now = self.engine.clock.now()
        counts = np.bincount(codes[codes >= 0], minlength=len(REASON_CODES))
        for code in np.flatnonzero(counts):
            reason = REASON_CODES[int(code)]
            rejected[reason.value] += int(counts[code])
            row = int(rows[int(np.argmax(codes == code))])
            if reason in _TIME_REASONS:
                detail = f"timestamp_s {float(batch.timestamps_s[row])!r}, server clock {now:.3f}"
            else:
                detail = f"value {float(batch.values[row])!r}"
            batch.details.setdefault(reason.value, f"row {row}: {detail}")

    def _resolve(self, batch: SampleBatch) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Map each row's names to a series id; unknown names are marked as problems."""
        engine = self.engine
        rows = len(batch)
        known = set(engine.endpoints)
        cache: dict[tuple[str, str, str], int | tuple[str, str]] = {}
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
            found = cache.get(key)
            if found is None:
                found = self._series_id(key, known)
                cache[key] = found
            if isinstance(found, int):
                sids[row] = found
                continue
            reason, detail = found
            if single:
                for rejected in range(rows):
                    batch.reject(rejected, reason, detail)
            else:
                batch.reject(row, reason, detail)
        if single and rows:
            sids[:] = sids[0]
        return sids

    def _series_id(self, key: tuple[str, str, str], known: set[str]) -> int | tuple[str, str]:
        """Return the series id of ``key``, or the reject reason and its detail."""
        endpoint, metric, _ = key
        if endpoint not in known:
            return "unknown_endpoint", f"{short_json(endpoint)} is not configured"
        try:
            return self.engine.series_id(*key)
        except UnknownEndpointError:
            return "unknown_metric", f"{short_json(f'{endpoint}/{metric}')} is not configured"
        except TooManySeriesError:
            limit = self.engine.ingest_config.max_series_per_endpoint
            return (
                "too_many_series",
                f"endpoint {short_json(endpoint)} has reached its limit of {limit} live series "
                "(ingest.max_series_per_endpoint)",
            )

    def apply_events(self, events: InstanceEvents, client: int | str = "-") -> tuple[str, ...]:
        """Apply the valid instance events; return the reply frames (an error, then the ack).

        Invalid entries and events of unknown endpoints are counted as rejected by reason and
        never stop the other events of the frame.
        """
        accepted = 0
        rejected = Counter(events.rejected)
        details = dict(events.details)
        for endpoint, instance, event in events.events:
            try:
                self.engine.instance_event(endpoint, instance, event)
            except UnknownEndpointError:
                rejected["unknown_endpoint"] += 1
                details.setdefault(
                    "unknown_endpoint", f"endpoint {short_json(endpoint)} is not configured"
                )
            else:
                accepted += 1
        ack = ack_frame(events.frame_id, accepted, rejected)
        if not rejected:
            return (ack,)
        summary = "; ".join(
            f"{reason}: {count} (first {details[reason]})"
            for reason, count in sorted(rejected.items())
        )
        message = f"rejected {sum(rejected.values())} of {events.size} events: {summary}"
        self.log_rejected("events_rejected", client, message)
        return (error_frame(events.frame_id, "events_rejected", message), ack)

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


def _check_subscription_size(names: set[str]) -> None:
    if len(names) > MAX_SUBSCRIPTION_NAMES:
        raise FrameError(
            "invalid_frame",
            f"a subscription may name at most {MAX_SUBSCRIPTION_NAMES} endpoints, this one "
            f"would name {len(names)}; subscribe with endpoints null for every endpoint",
        )


def _at(column: str | list[str], row: int) -> str:
    return column if isinstance(column, str) else column[row]

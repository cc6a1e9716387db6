"""Drive an engine with a recorded metric stream on a fake clock, without sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from warmstart.engine.clock import FakeClock
from warmstart.engine.decision import Decision
from warmstart.engine.engine import Engine
from warmstart.engine.spec import EndpointSpec


@dataclass(frozen=True, slots=True)
class Delivery:
    """One sample as the engine receives it.

    ``received_s`` is the engine clock time of arrival. ``timestamp_s`` is the event time on
    the producer's clock, which may be skewed, late or out of order relative to ``received_s``.
    """

    received_s: float
    instance: str
    timestamp_s: float
    value: float


MetricStream = tuple[Delivery, ...]


def replay(
    engine: Engine,
    clock: FakeClock,
    endpoint: str,
    metric: str,
    stream: Iterable[Delivery],
    until_s: float,
) -> list[Decision]:
    """Deliver ``stream`` and tick the engine at every due time up to ``until_s`` (seconds).

    The clock moves to each delivery's ``received_s`` and to each evaluation time in order, so
    the result depends only on the stream and the engine's configuration. Return every
    decision the engine made.
    """
    pending = sorted(stream, key=lambda d: d.received_s)
    decisions: list[Decision] = []
    position = 0
    while True:
        due = engine.next_due()
        if due is None:
            due = clock.now()
        next_delivery = pending[position].received_s if position < len(pending) else None
        delivery_first = next_delivery is not None and next_delivery < due
        step = next_delivery if delivery_first and next_delivery is not None else due
        if step > until_s:
            break
        clock.set(max(step, clock.now()))
        while position < len(pending) and pending[position].received_s <= clock.now():
            item = pending[position]
            engine.ingest(endpoint, metric, item.instance, item.timestamp_s, item.value)
            position += 1
        if step == due:
            decisions.extend(engine.tick())
    return decisions


def replay_spec(
    spec: EndpointSpec,
    metric: str,
    stream: Sequence[Delivery],
    until_s: float,
    start_s: float = 0.0,
) -> list[Decision]:
    """Build an engine for ``spec`` on a fake clock at ``start_s`` and ``replay`` the stream."""
    clock = FakeClock(start_s)
    engine = Engine([spec], clock=clock)
    return replay(engine, clock, spec.name, metric, stream, until_s)


async def settle(rounds: int = 5) -> None:
    """Let tasks woken by ``FakeClock.advance`` run: yield to the event loop ``rounds`` times."""
    for _ in range(rounds):
        await asyncio.sleep(0)

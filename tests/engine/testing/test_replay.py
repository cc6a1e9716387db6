"""Replay drives an engine deterministically."""

from __future__ import annotations

from warmstart.engine import Engine
from warmstart.testing import Delivery, FakeClock, constant_stream, replay, replay_spec

from ..helpers import tracking_spec


def test_replay_ticks_every_interval_and_delivers_in_order():
    decisions = replay_spec(
        tracking_spec(initial_capacity=1),
        "concurrency",
        constant_stream(30.0, 10.0),
        until_s=1009.0,
        start_s=1000.0,
    )
    assert [d.at for d in decisions] == [1000.0 + s for s in range(10)]
    assert decisions[-1].desired == 3


def test_replay_is_deterministic():
    stream = (Delivery(1000.5, "i0", 1000.5, 40.0), Delivery(1003.0, "i1", 1002.0, 10.0))
    first = replay_spec(tracking_spec(), "concurrency", stream, 1010.0, 1000.0)
    second = replay_spec(tracking_spec(), "concurrency", stream, 1010.0, 1000.0)
    assert first == second


def test_replay_moves_clock_to_deliveries():
    clock = FakeClock(1000.0)
    engine = Engine([tracking_spec()], clock=clock)
    replay(engine, clock, "llm", "concurrency", (Delivery(1002.5, "i0", 1002.5, 1.0),), 1003.0)
    assert clock.now() == 1003.0
    assert engine.series_count == 1

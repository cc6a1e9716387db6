"""Adding and removing endpoints on a running engine."""

from __future__ import annotations

import pytest

from warmstart.engine import (
    Engine,
    EngineConfigError,
    FakeClock,
    RejectReason,
    UnknownEndpointError,
)

from .helpers import START, tracking_spec


def test_added_endpoint_scales_from_samples() -> None:
    clock = FakeClock(START)
    engine = Engine([], clock=clock)
    engine.add_endpoint(tracking_spec(name="late"))
    for second in range(5):
        clock.advance(1.0)
        engine.ingest("late", "concurrency", "pod-a", START + second, 35.0)
        engine.tick()
    assert engine.endpoints == ("late",)
    assert engine.state("late").desired == 4


def test_added_endpoint_name_must_be_new() -> None:
    engine = Engine([tracking_spec(name="llm")], clock=FakeClock(START))
    with pytest.raises(EngineConfigError, match="already exists"):
        engine.add_endpoint(tracking_spec(name="llm"))


def test_removed_endpoint_rejects_its_samples() -> None:
    clock = FakeClock(START)
    engine = Engine([tracking_spec(name="llm"), tracking_spec(name="other")], clock=clock)
    engine.ingest("llm", "concurrency", "pod-a", START, 5.0)
    engine.remove_endpoint("llm")
    engine.ingest("llm", "concurrency", "pod-a", START, 5.0)
    engine.flush()
    assert engine.endpoints == ("other",)
    assert engine.rejects.totals[RejectReason.UNKNOWN_ENDPOINT] == 1
    with pytest.raises(UnknownEndpointError):
        engine.state("llm")


def test_readded_endpoint_starts_without_old_data() -> None:
    clock = FakeClock(START)
    engine = Engine([tracking_spec(name="llm")], clock=clock)
    for second in range(5):
        clock.advance(1.0)
        engine.ingest("llm", "concurrency", "pod-a", START + second, 80.0)
        engine.tick()
    engine.remove_endpoint("llm")
    engine.add_endpoint(tracking_spec(name="llm"))
    decision = engine.evaluate()[0]
    assert engine.state("llm").desired == 1
    assert "no fresh" in decision.recommendations[0].reason

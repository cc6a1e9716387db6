"""Endpoint specs and feeding helpers shared by engine tests."""

from __future__ import annotations

import asyncio

from warmstart.engine import (
    Behavior,
    Decision,
    EndpointSpec,
    Engine,
    FakeClock,
    MetricSpec,
    ScalingRules,
    TargetTracking,
)

START = 1000.0

# A behavior with no stabilization, no rate limits, no restart hold and no tolerance, so a test
# sees the policy's own output.
DIRECT = Behavior(
    scale_up=ScalingRules(0.0, ()),
    scale_down=ScalingRules(0.0, ()),
    tolerance=0.0,
    restart_hold_s=0.0,
)


def tracking_spec(
    *,
    target: float = 10.0,
    window_s: float = 10.0,
    behavior: Behavior = DIRECT,
    min_capacity: int = 1,
    max_capacity: int = 100,
    initial_capacity: int | None = None,
    stale_after_s: float = 10.0,
    name: str = "llm",
    per_instance: bool = True,
) -> EndpointSpec:
    """Return an endpoint tracking ``concurrency`` at ``target`` per instance."""
    return EndpointSpec(
        name,
        (MetricSpec("concurrency", stale_after_s=stale_after_s, per_instance=per_instance),),
        (TargetTracking("concurrency", target, window_s=window_s),),
        min_capacity=min_capacity,
        max_capacity=max_capacity,
        behavior=behavior,
        initial_capacity=initial_capacity,
    )


def feed(
    engine: Engine, clock: FakeClock, load: float, seconds: int, instances: int = 2
) -> list[Decision]:
    """Send ``load`` split over ``instances`` and tick, once per second for ``seconds``.

    Return every decision made.
    """
    decisions = []
    for _ in range(seconds):
        for index in range(instances):
            engine.ingest("llm", "concurrency", f"i{index}", clock.now(), load / instances)
        decisions.extend(engine.tick())
        clock.advance(1.0)
    return decisions


class SteppedClock:
    """A clock that a test sets to any reading, earlier ones included, as a system clock can be."""

    def __init__(self, reading: float) -> None:
        self.reading = reading

    def now(self) -> float:
        return self.reading

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(0)

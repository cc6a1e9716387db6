"""Engines deciding target-tracking endpoints in groups against engines deciding one at a time.

The engine groups only endpoints whose policies are exactly ``TargetTracking``. A subclass that
changes nothing (``OneAtATime``) makes the same engine decide each endpoint alone with
``run_stages``, which is the reference here: both engines get the same specs, samples, instance
events and evaluation calls, and must return equal decisions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.engine import (
    Aggregation,
    Behavior,
    Decision,
    EndpointSpec,
    Engine,
    FakeClock,
    InstanceEvent,
    MetricKind,
    MetricSpec,
    PolicyInputs,
    Predictive,
    Recommendation,
    ScalingRules,
    Statistic,
    TargetTracking,
    tracking_groups,
)
from warmstart.engine.tracking_groups import MIN_GROUP

from .behavior_strategies import behaviors
from .helpers import START

ENDPOINTS = MIN_GROUP + 8


class OneAtATime(TargetTracking):
    """``TargetTracking`` that the engine decides one endpoint at a time."""


def _reference(spec: EndpointSpec) -> EndpointSpec:
    policies = tuple(
        OneAtATime(p.metric, p.target, p.statistic, p.window_s, p.half_life_s, name=p.name)
        if type(p) is TargetTracking
        else p
        for p in spec.policies
    )
    return dataclasses.replace(spec, policies=policies)


# Per endpoint: min capacity, room above it, initial capacity as a fraction of the range,
# per-instance KV metric, load staleness, target, statistic, window, second policy, behavior
# from the pool, no restart hold. Tuples keep a failing example's printout short.
endpoint_params = st.tuples(
    st.sampled_from([0, 0, 1, 2]),
    st.integers(0, 30),
    st.floats(0.0, 1.0),
    st.booleans(),
    st.sampled_from([2.0, 10.0]),
    st.sampled_from([1.0, 2.5, 10.0]),
    st.sampled_from([Statistic.MEAN, Statistic.MAX]),
    st.sampled_from([3.0, 10.0]),
    st.booleans(),
    st.integers(0, 2),
    st.booleans(),
)
fleets = st.tuples(
    st.lists(behaviors, min_size=3, max_size=3),
    st.lists(endpoint_params, min_size=ENDPOINTS, max_size=ENDPOINTS),
)


def _specs(fleet: tuple[list[Behavior], list[tuple]]) -> list[EndpointSpec]:
    """Build endpoints with one or two target-tracking policies, on a few shared behaviors."""
    pool, params = fleet
    specs = []
    for index, (
        min_capacity,
        room,
        initial,
        per_instance,
        stale_after_s,
        target,
        statistic,
        window_s,
        second_policy,
        behavior_index,
        no_hold,
    ) in enumerate(params):
        metrics = (
            MetricSpec("load", stale_after_s=stale_after_s),
            MetricSpec(
                "kv",
                aggregation=Aggregation.MEAN,
                kind=MetricKind.GAUGE,
                stale_after_s=3.0,
                per_instance=per_instance,
            ),
        )
        policies = [TargetTracking("load", target, statistic=statistic, window_s=window_s)]
        if second_policy:
            policies.append(TargetTracking("kv", 0.7, window_s=5.0))
        behavior = pool[behavior_index]
        if no_hold:
            behavior = dataclasses.replace(behavior, restart_hold_s=0.0)
        specs.append(
            EndpointSpec(
                f"e{index}",
                metrics,
                tuple(policies),
                min_capacity=min_capacity,
                max_capacity=min_capacity + room,
                behavior=behavior,
                initial_capacity=min_capacity + round(room * initial),
            )
        )
    return specs


# One step: seconds to advance, a seed for the samples and events, and how to evaluate.
steps = st.tuples(
    st.sampled_from([0.5, 1.0, 2.0, 5.0]),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["tick", "tick", "tick", "all", "subset", "earlier"]),
)


def _drive(engine: Engine, clock: FakeClock, step: tuple[float, int, str]) -> list[Decision]:
    """Send one step's samples and events to ``engine`` and evaluate when the step requests it."""
    advance_s, seed, how = step
    rng = np.random.default_rng(seed)
    now = clock.now()
    names = engine.endpoints
    for name in names:
        if rng.random() < 0.1:
            event = list(InstanceEvent)[rng.integers(len(InstanceEvent))]
            engine.instance_event(name, f"i{rng.integers(4)}", event, at=now)
        if rng.random() < 0.15:
            continue
        # Idle endpoints (all zero) are frequent, so scale to zero happens.
        scale = float(rng.choice([0.0, 0.0, 40.0, 400.0]))
        for instance in range(int(rng.integers(0, 4))):
            level = scale * float(rng.random())
            engine.ingest(name, "load", f"i{instance}", now - rng.uniform(0, 1), level)
            if rng.random() < 0.8:
                engine.ingest(name, "kv", f"i{instance}", now, float(rng.uniform(0, 1)))
    if how == "tick":
        decisions = engine.tick()
    elif how == "all":
        decisions = engine.evaluate()
    elif how == "subset":
        # A subset in random order with repeats: each repeat decides again from the result.
        chosen = [names[i] for i in rng.integers(0, len(names), size=MIN_GROUP + 4)]
        decisions = engine.evaluate(endpoints=chosen)
    else:
        decisions = engine.evaluate(now=now - 3.0)
    clock.advance(advance_s)
    return decisions


def _run_both(
    specs: list[EndpointSpec],
    run: Callable[[Engine, FakeClock], list[list[Decision]]],
    **options: object,
) -> tuple[Engine, Engine, list[list[Decision]], list[list[Decision]]]:
    grouped_clock = FakeClock(START)
    grouped = Engine(specs, clock=grouped_clock, **options)  # type: ignore[arg-type]
    alone_clock = FakeClock(START)
    alone = Engine([_reference(s) for s in specs], clock=alone_clock, **options)  # type: ignore[arg-type]
    return grouped, alone, run(grouped, grouped_clock), run(alone, alone_clock)


@settings(max_examples=60)
@given(fleet=fleets, sequence=st.lists(steps, min_size=1, max_size=20))
def test_groups_decide_like_one_at_a_time(fleet, sequence):
    specs = _specs(fleet)
    # The first tick evaluates every endpoint, so a group forms at least once.
    first: tuple[float, int, str] = (1.0, 0, "tick")

    def run(engine: Engine, clock: FakeClock) -> list[list[Decision]]:
        return [_drive(engine, clock, step) for step in [first, *sequence]]

    with mock.patch.object(
        tracking_groups, "run_rows", wraps=tracking_groups.run_rows
    ) as grouped_rows:
        grouped, alone, grouped_decisions, alone_decisions = _run_both(specs, run)

    assert grouped_rows.called
    for grouped_step, alone_step in zip(grouped_decisions, alone_decisions, strict=True):
        assert grouped_step == alone_step
    for name in grouped.endpoints:
        assert grouped.state(name) == alone.state(name)


@dataclasses.dataclass(frozen=True)
class AlwaysAhead(Predictive):
    """A forecast that always requests two more instances, so every decision prefetches."""

    def recommend(self, inputs: PolicyInputs, state: object) -> tuple[Recommendation, object]:
        desired = inputs.capacity.current + 2
        return Recommendation(self.name, desired, True, "ahead", True, True), state


def test_prefetch_hook_changes_later_endpoints_as_one_at_a_time():
    """A prefetch hook that changes endpoints later in the pass, as user code may."""
    specs = [
        EndpointSpec(
            f"e{index}",
            (MetricSpec("load"),),
            (TargetTracking("load", 5.0, window_s=5.0),),
            max_capacity=50,
            behavior=Behavior(restart_hold_s=0.0),
        )
        for index in range(ENDPOINTS)
    ]
    forecaster = EndpointSpec(
        "forecast",
        (MetricSpec("load"),),
        (TargetTracking("load", 5.0, window_s=5.0), AlwaysAhead("load", 5.0)),
        max_capacity=50,
    )
    specs.insert(ENDPOINTS // 2, forecaster)
    engines: dict[str, Engine] = {}

    def hook_for(key: str) -> Callable[[Decision], None]:
        def hook(decision: Decision) -> None:
            engine = engines[key]
            now = engine.clock.now()
            for name in ("e1", f"e{ENDPOINTS - 1}", f"e{ENDPOINTS - 2}"):
                engine.instance_event(name, "extra", InstanceEvent.READY, at=now)
                engine.ingest(name, "load", "extra", now, 300.0)

        return hook

    def run(engine: Engine, clock: FakeClock) -> list[list[Decision]]:
        out = []
        for second in range(12):
            for spec in specs:
                engine.ingest(spec.name, "load", "i0", clock.now(), float(10 + second * 3))
            out.append(engine.tick())
            clock.advance(1.0)
        return out

    grouped_clock = FakeClock(START)
    grouped = Engine(
        specs, clock=grouped_clock, prefetch=hook_for("grouped"), prefetch_interval_s=0.0
    )
    engines["grouped"] = grouped
    alone_clock = FakeClock(START)
    alone = Engine(
        [_reference(s) for s in specs],
        clock=alone_clock,
        prefetch=hook_for("alone"),
        prefetch_interval_s=0.0,
    )
    engines["alone"] = alone

    grouped_decisions = run(grouped, grouped_clock)
    alone_decisions = run(alone, alone_clock)

    assert any(d.prefetch for step in grouped_decisions for d in step)
    assert grouped_decisions == alone_decisions
    assert grouped.state("e1") == alone.state("e1")


def test_capacity_beyond_row_limit_is_decided_alone():
    """Endpoints whose bounds do not fit the rows still decide like the reference."""
    specs = [
        EndpointSpec(
            f"e{index}",
            (MetricSpec("load"),),
            (TargetTracking("load", 1e-9, window_s=5.0),),
            max_capacity=2**62 if index % 2 else 100,
            behavior=Behavior(ScalingRules(0.0, ()), ScalingRules(0.0, ()), restart_hold_s=0.0),
        )
        for index in range(ENDPOINTS)
    ]

    def run(engine: Engine, clock: FakeClock) -> list[list[Decision]]:
        out = []
        for _ in range(5):
            for spec in specs:
                engine.ingest(spec.name, "load", "i0", clock.now(), 1e6)
            out.append(engine.tick())
            clock.advance(1.0)
        return out

    _, _, grouped_decisions, alone_decisions = _run_both(specs, run)

    assert grouped_decisions == alone_decisions
    assert max(d.desired for d in grouped_decisions[-1]) > 2**40


def test_state_moves_back_when_decided_alone():
    """An endpoint decided in a group and then alone keeps its behavior state."""
    specs = [
        EndpointSpec(
            f"e{index}",
            (MetricSpec("load"),),
            (TargetTracking("load", 5.0, window_s=5.0),),
            max_capacity=50,
        )
        for index in range(ENDPOINTS)
    ]

    def run(engine: Engine, clock: FakeClock) -> list[list[Decision]]:
        out = []
        for second in range(30):
            for spec in specs:
                engine.ingest(spec.name, "load", "i0", clock.now(), float(50 - second))
            # Every third pass decides a few endpoints alone, the others all of them.
            if second % 3 == 2:
                out.append(engine.evaluate(endpoints=["e0", "e1"]))
            else:
                out.append(engine.tick())
            clock.advance(1.0)
        return out

    grouped, alone, grouped_decisions, alone_decisions = _run_both(specs, run)

    assert grouped_decisions == alone_decisions
    assert grouped.state("e0") == alone.state("e0")
    assert any(d.stage("stabilization").note for step in grouped_decisions for d in step)


def test_reference_engine_decides_one_at_a_time():
    """The reference engine of these tests never uses the group path."""
    specs = [
        EndpointSpec(f"e{index}", (MetricSpec("load"),), (TargetTracking("load", 5.0),))
        for index in range(ENDPOINTS)
    ]
    clock = FakeClock(START)
    alone = Engine([_reference(s) for s in specs], clock=clock)
    grouped = Engine(specs, clock=FakeClock(START))
    for spec in specs:
        alone.ingest(spec.name, "load", "i0", START, 20.0)
        grouped.ingest(spec.name, "load", "i0", START, 20.0)

    with mock.patch.object(tracking_groups, "run_rows", wraps=tracking_groups.run_rows) as rows:
        alone.tick()
    assert not rows.called
    with mock.patch.object(tracking_groups, "run_rows", wraps=tracking_groups.run_rows) as rows:
        grouped.tick()
    assert rows.called

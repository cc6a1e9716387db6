"""Scenario tests for the engine, named for the behaviour they pin; fixed times, fake clock."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.engine import (
    Aggregation,
    Burst,
    EndpointSpec,
    Engine,
    EngineClosedError,
    EngineConfigError,
    FakeClock,
    IngestConfig,
    InstanceEvent,
    MetricSpec,
    RejectReason,
    TargetTracking,
    TooManySeriesError,
    UnknownEndpointError,
    WallClock,
)
from warmstart.engine.series import MIN_DROP
from warmstart.testing import settle

from .helpers import DIRECT, START, SteppedClock, feed, tracking_spec


def two_metric_spec(**kwargs) -> EndpointSpec:
    return EndpointSpec(
        "llm",
        (MetricSpec("concurrency"), MetricSpec("queue", per_instance=False)),
        (
            TargetTracking("concurrency", 10.0, window_s=10.0),
            TargetTracking("queue", 5.0, window_s=10.0),
        ),
        behavior=DIRECT,
        **kwargs,
    )


# -- rules from the behavior contract -----------------------------------------------------------


def test_missing_metric_blocks_scale_down(clock):
    engine = Engine([two_metric_spec(initial_capacity=8)], clock=clock)
    for _ in range(20):
        engine.ingest("llm", "concurrency", "i0", clock.now(), 10.0)
        clock.advance(1.0)
    # The queue metric was never reported, so a low concurrency must not lower capacity.
    (decision,) = engine.tick()
    assert decision.desired == 8
    assert "no data for target_tracking(queue)" in decision.reason


def test_missing_metric_still_allows_scale_up_from_fresh_one(clock):
    engine = Engine([two_metric_spec(initial_capacity=2)], clock=clock)
    for _ in range(5):
        engine.ingest("llm", "concurrency", "i0", clock.now(), 90.0)
        clock.advance(1.0)
    (decision,) = engine.tick()
    assert decision.desired == 9


def test_stale_instance_blocks_scale_down(clock):
    engine = Engine([tracking_spec(initial_capacity=6, stale_after_s=5.0)], clock=clock)
    feed(engine, clock, 60.0, 10)
    last_i1_sample = clock.now() - 1.0
    # i1 stops reporting; i0 alone reports a low load.
    decisions = []
    for _ in range(15):
        engine.ingest("llm", "concurrency", "i0", clock.now(), 1.0)
        decisions += engine.tick()
        clock.advance(1.0)
    stale = [d for d in decisions if d.at > last_i1_sample + 5.0]
    assert stale
    assert all(d.desired >= d.current for d in stale)
    assert "stale or missing" in stale[-1].reason


def test_ready_instance_without_metric_blocks_scale_down(clock):
    engine = Engine([tracking_spec(initial_capacity=2)], clock=clock)
    for name in ("i0", "i1"):
        engine.instance_event("llm", name, InstanceEvent.LAUNCHED)
        engine.instance_event("llm", name, InstanceEvent.READY)
    for _ in range(5):
        engine.ingest("llm", "concurrency", "i0", clock.now(), 1.0)
        decisions = engine.tick()
        clock.advance(1.0)
    assert decisions[-1].desired == 2
    assert decisions[-1].recommendations[0].scale_down_allowed is False


def test_zero_ready_instances_scale_from_current_count(clock):
    spec = tracking_spec(initial_capacity=2, per_instance=False)
    engine = Engine([spec], clock=clock)
    for name in ("i0", "i1"):
        engine.instance_event("llm", name, InstanceEvent.LAUNCHED)
    engine.ingest("llm", "concurrency", "lb", clock.now(), 50.0)
    (decision,) = engine.tick()
    assert engine.state("llm").ready == 0
    assert decision.current == 2
    assert decision.desired == 5


def test_starting_instances_count_toward_capacity(clock):
    engine = Engine([tracking_spec(initial_capacity=2)], clock=clock)
    for name in ("i0", "i1"):
        engine.instance_event("llm", name, InstanceEvent.LAUNCHED)
        engine.instance_event("llm", name, InstanceEvent.READY)
    decisions = feed(engine, clock, 80.0, 1)
    assert decisions[-1].desired == 8
    # The actuator launches 6; while they start, the same burst asks for nothing more.
    for index in range(2, 8):
        engine.instance_event("llm", f"i{index}", InstanceEvent.LAUNCHED)
    decisions = feed(engine, clock, 80.0, 10)
    assert all(d.desired == 8 for d in decisions)
    assert engine.state("llm").pending == 6


def test_decided_capacity_counts_before_launch_events(clock):
    engine = Engine([tracking_spec(initial_capacity=2)], clock=clock)
    engine.instance_event("llm", "i0", InstanceEvent.READY)
    engine.instance_event("llm", "i1", InstanceEvent.READY)
    feed(engine, clock, 80.0, 1)
    state = engine.state("llm")
    assert (state.current, state.ready, state.pending) == (8, 2, 6)


def test_restart_holds_scale_down_for_stable_window(clock):
    spec = tracking_spec(initial_capacity=10, window_s=30.0)
    spec = EndpointSpec(
        spec.name,
        spec.metrics,
        spec.policies,
        initial_capacity=10,
        behavior=DIRECT.__class__(
            scale_up=DIRECT.scale_up, scale_down=DIRECT.scale_down, tolerance=0.0
        ),
    )
    engine = Engine([spec], clock=clock)
    decisions = feed(engine, clock, 10.0, 40)
    held = [d for d in decisions if d.at < START + 30.0]
    assert all(d.desired == 10 for d in held)
    assert "since start" in held[-1].reason
    assert decisions[-1].desired == 1


def test_constant_load_settles_to_constant_decision(clock):
    spec = EndpointSpec(
        "llm",
        (MetricSpec("concurrency"),),
        (TargetTracking("concurrency", 10.0, window_s=30.0),),
        initial_capacity=1,
    )
    engine = Engine([spec], clock=clock)
    decisions = feed(engine, clock, 47.0, 600)
    late = decisions[300:]
    assert {d.desired for d in late} == {5}
    assert not any(d.changed for d in late)


def test_one_burst_answered_once_with_burst_policy(clock):
    spec = EndpointSpec(
        "llm",
        (MetricSpec("concurrency"),),
        (Burst("concurrency", 10.0),),
        initial_capacity=2,
        behavior=DIRECT,
        interval_s=2.0,
    )
    engine = Engine([spec], clock=clock)
    feed(engine, clock, 20.0, 60)
    decisions = feed(engine, clock, 200.0, 10)
    ups = [d for d in decisions if d.direction == "up"]
    assert ups
    assert max(d.desired for d in decisions) == 20
    assert "panic" in ups[0].reason


# -- scale to zero ------------------------------------------------------------------------------


def test_scale_to_zero_after_idle_and_back_on_first_sample(clock):
    spec = tracking_spec(min_capacity=0, initial_capacity=1)
    engine = Engine([spec], clock=clock)
    decisions = feed(engine, clock, 0.0, 40)
    assert decisions[0].desired == 1
    assert decisions[-1].desired == 0
    zero_at = next(d.at for d in decisions if d.desired == 0)
    assert zero_at >= START + 30.0
    engine.ingest("llm", "concurrency", "i0", clock.now(), 3.0)
    (decision,) = engine.tick()
    assert decision.desired == 1


# -- decisions ----------------------------------------------------------------------------------


def test_decision_records_every_stage_and_winner(clock):
    engine = Engine([two_metric_spec(initial_capacity=1)], clock=clock)
    engine.ingest("llm", "concurrency", "i0", clock.now(), 30.0)
    engine.ingest("llm", "queue", "lb", clock.now(), 40.0)
    (decision,) = engine.tick()
    assert decision.stages[0].name == "raw"
    assert decision.policy == "target_tracking(queue)"
    assert decision.desired == 8
    text = decision.explain()
    assert "policy target_tracking(concurrency): 3" in text
    assert "policy target_tracking(queue): 8" in text


def test_identical_input_gives_identical_decisions():
    def run() -> list:
        clock = FakeClock(START)
        engine = Engine([tracking_spec(initial_capacity=1)], clock=clock)
        result = []
        for second in range(120):
            load = 30.0 + 20.0 * math.sin(second / 10.0)
            result += feed(engine, clock, load, 1)
        return result

    assert run() == run()


def test_tick_respects_interval(clock):
    spec = EndpointSpec(
        "llm",
        (MetricSpec("concurrency"),),
        (TargetTracking("concurrency", 10.0),),
        interval_s=15.0,
    )
    engine = Engine([spec], clock=clock)
    times = []
    for _ in range(46):
        times += [d.at for d in engine.tick()]
        clock.advance(1.0)
    assert times == [START, START + 15, START + 30, START + 45]
    assert engine.next_due() == START + 60


def test_evaluate_ignores_schedule(clock):
    engine = Engine([tracking_spec()], clock=clock)
    engine.tick()
    assert engine.tick() == []
    assert len(engine.evaluate()) == 1


def test_callback_gets_changes_only_by_default(clock):
    seen = []
    engine = Engine([tracking_spec(initial_capacity=1)], clock=clock, on_decision=seen.append)
    feed(engine, clock, 30.0, 5)
    assert [d.desired for d in seen] == [3]


def test_callback_gets_every_decision_with_emit_all(clock):
    seen = []
    engine = Engine([tracking_spec()], clock=clock, on_decision=seen.append, emit="all")
    feed(engine, clock, 30.0, 5)
    assert len(seen) == 5


def test_failing_callback_is_logged_not_raised(clock, caplog):
    def broken(decision):
        raise RuntimeError("actuator down")

    engine = Engine([tracking_spec(initial_capacity=1)], clock=clock, on_decision=broken)
    with caplog.at_level(logging.ERROR, logger="warmstart.engine"):
        feed(engine, clock, 30.0, 1)
    assert "decision callback" in caplog.text
    assert engine.state("llm").desired == 3


# -- ingestion through the engine ---------------------------------------------------------------


def test_unknown_endpoint_and_metric_are_counted(clock):
    engine = Engine([tracking_spec()], clock=clock)
    engine.ingest("nope", "concurrency", "i0", clock.now(), 1.0)
    engine.ingest("llm", "nope", "i0", clock.now(), 1.0)
    assert engine.rejects.totals[RejectReason.UNKNOWN_ENDPOINT] == 1
    assert engine.rejects.totals[RejectReason.UNKNOWN_METRIC] == 1


def test_batch_with_bad_samples_keeps_good_ones(clock):
    engine = Engine([tracking_spec(initial_capacity=1)], clock=clock)
    sid0 = engine.series_id("llm", "concurrency", "i0")
    sid1 = engine.series_id("llm", "concurrency", "i1")
    accepted = engine.ingest_batch(
        np.array([sid0, sid1, sid0, sid1]),
        np.full(4, clock.now()),
        np.array([20.0, math.nan, -1.0, 10.0]),
    )
    assert accepted == 2
    assert engine.rejects.total == 2
    (decision,) = engine.tick()
    assert decision.desired == 3


def test_columns_ingest_interns_names_and_rejects_unknown(clock):
    engine = Engine([tracking_spec(initial_capacity=1)], clock=clock)
    accepted = engine.ingest_columns(
        np.array(["llm", "llm", "other"]),
        "concurrency",
        np.array(["i0", "i1", "i0"]),
        np.full(3, clock.now()),
        np.array([15.0, 15.0, 99.0]),
    )
    assert accepted == 2
    assert engine.rejects.totals[RejectReason.UNKNOWN_ENDPOINT] == 1
    assert engine.series_count == 2
    assert engine.tick()[0].desired == 3


def test_batch_shape_mismatch_raises(clock):
    engine = Engine([tracking_spec()], clock=clock)
    with pytest.raises(ValueError, match="equal length"):
        engine.ingest_batch(np.array([0, 1]), np.array([1.0]), np.array([1.0, 2.0]))


def test_series_id_for_unknown_endpoint_raises(clock):
    engine = Engine([tracking_spec()], clock=clock)
    with pytest.raises(UnknownEndpointError, match="unknown endpoint"):
        engine.series_id("nope", "concurrency", "i0")


@pytest.mark.parametrize("skew_s", [-90.0, 90.0])
def test_skewed_producer_decides_like_exact_one(skew_s):
    def run(offset: float) -> list[int]:
        clock = FakeClock(START)
        engine = Engine([tracking_spec(initial_capacity=1)], clock=clock)
        desired = []
        for second in range(60):
            load = 80.0 if 20 <= second < 40 else 10.0
            for index in range(2):
                engine.ingest("llm", "concurrency", f"i{index}", clock.now() + offset, load / 2)
            desired += [d.desired for d in engine.tick()]
            clock.advance(1.0)
        return desired

    assert run(skew_s) == run(0.0)
    assert max(run(skew_s)) == 8


def test_skewed_producer_without_correction_is_rejected():
    clock = FakeClock(START)
    engine = Engine([tracking_spec()], clock=clock, ingest=IngestConfig(skew_correction=False))
    engine.ingest("llm", "concurrency", "i0", clock.now() + 90.0, 5.0)
    engine.flush()
    assert engine.rejects.totals[RejectReason.TOO_FAR_IN_FUTURE] == 1


# -- instances ----------------------------------------------------------------------------------


def test_time_to_ready_is_measured_from_events(clock):
    spec = tracking_spec()
    spec = EndpointSpec(spec.name, spec.metrics, spec.policies, time_to_ready_s=300.0)
    engine = Engine([spec], clock=clock)
    assert engine.state("llm").time_to_ready_s == 300.0
    engine.instance_event("llm", "a", InstanceEvent.LAUNCHED, at=START)
    engine.instance_event("llm", "a", InstanceEvent.READY, at=START + 120.0)
    engine.instance_event("llm", "b", InstanceEvent.LAUNCHED, at=START)
    engine.instance_event("llm", "b", InstanceEvent.READY, at=START + 180.0)
    assert engine.state("llm").time_to_ready_s == 150.0


def test_gone_instance_series_stop_counting(clock):
    engine = Engine([tracking_spec(initial_capacity=2, stale_after_s=5.0)], clock=clock)
    for name in ("i0", "i1"):
        engine.instance_event("llm", name, InstanceEvent.READY)
    feed(engine, clock, 40.0, 3)
    engine.instance_event("llm", "i1", InstanceEvent.DRAINING)
    engine.instance_event("llm", "i1", InstanceEvent.GONE)
    for _ in range(10):
        engine.ingest("llm", "concurrency", "i0", clock.now(), 5.0)
        decisions = engine.tick()
        clock.advance(1.0)
    # i1's series is inactive, so it neither adds load nor blocks the scale-down as stale.
    assert decisions[-1].recommendations[0].scale_down_allowed
    assert engine.state("llm").draining == 0


def test_instance_event_for_unknown_endpoint_raises(clock):
    engine = Engine([tracking_spec()], clock=clock)
    with pytest.raises(UnknownEndpointError):
        engine.instance_event("nope", "i0", InstanceEvent.READY)


# -- configuration ------------------------------------------------------------------------------


def test_duplicate_endpoint_names_raise():
    with pytest.raises(EngineConfigError, match="duplicate endpoint"):
        Engine([tracking_spec(), tracking_spec()])


def test_policy_reading_undeclared_metric_raises():
    with pytest.raises(EngineConfigError, match="not in metrics"):
        EndpointSpec("e", (MetricSpec("a"),), (TargetTracking("b", 1.0),))


def test_state_of_unknown_endpoint_raises(clock):
    with pytest.raises(UnknownEndpointError):
        Engine([tracking_spec()], clock=clock).state("nope")


def test_memory_per_default_series_is_bounded(clock):
    engine = Engine([tracking_spec(window_s=60.0)], clock=clock)
    for index in range(1000):
        engine.series_id("llm", "concurrency", f"i{index}")
    assert engine.state_nbytes / 1000 < 2 * (64 * 28 + 64)


# -- async lifecycle ----------------------------------------------------------------------------


def run_async(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=10))


def test_async_loop_ticks_on_fake_clock_and_streams_decisions():
    async def scenario():
        clock = FakeClock(START)
        engine = Engine([tracking_spec(initial_capacity=1)], clock=clock)
        received = []

        async def consume():
            async for decision in engine.decisions():
                received.append(decision)

        async with engine:
            consumer = asyncio.create_task(consume())
            await settle()
            engine.ingest("llm", "concurrency", "i0", clock.now(), 50.0)
            clock.advance(1.0)
            await settle()
            clock.advance(1.0)
            await settle()
        await consumer
        return received

    received = run_async(scenario())
    assert [d.desired for d in received] == [5]


def test_stop_ends_task_and_rejects_further_use():
    async def scenario():
        clock = FakeClock(START)
        engine = Engine([tracking_spec()], clock=clock)
        await engine.start()
        await settle()
        await engine.stop()
        await engine.stop()
        assert clock.pending_sleepers == 0
        return engine

    engine = run_async(scenario())
    with pytest.raises(EngineClosedError):
        engine.ingest("llm", "concurrency", "i0", START, 1.0)


def test_cancelling_stop_caller_is_reraised():
    async def scenario():
        clock = FakeClock(START)
        engine = Engine([tracking_spec()], clock=clock)
        await engine.start()
        await settle()
        stopper = asyncio.create_task(engine.stop())
        stopper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopper

    run_async(scenario())


def test_first_sample_at_zero_wakes_loop_before_next_interval():
    async def scenario():
        clock = FakeClock(START)
        spec = EndpointSpec(
            "llm",
            (MetricSpec("concurrency"),),
            (TargetTracking("concurrency", 10.0, window_s=10.0),),
            min_capacity=0,
            initial_capacity=0,
            interval_s=60.0,
            behavior=DIRECT,
        )
        seen = []
        engine = Engine([spec], clock=clock, on_decision=seen.append)
        async with engine:
            await settle()
            clock.advance(1.0)
            await settle()
            # Zero capacity, and the next interval is 59 s away; a sample wakes the loop.
            engine.ingest("llm", "concurrency", "i0", clock.now(), 5.0)
            await settle()
        return seen

    seen = run_async(scenario())
    assert [d.desired for d in seen] == [1]


def test_non_numeric_value_raises_at_ingest(clock):
    engine = Engine([tracking_spec()], clock=clock)
    with pytest.raises(ValueError, match="could not convert"):
        engine.ingest("llm", "concurrency", "i0", clock.now(), "lots")
    engine.ingest("llm", "concurrency", "i0", clock.now(), 5.0)
    assert engine.flush() == 1


# -- live clock -----------------------------------------------------------------------------------


def test_default_clock_is_wall_clock():
    engine = Engine([tracking_spec()])
    assert isinstance(engine.clock, WallClock)


def test_default_clock_accepts_unix_timestamps():
    engine = Engine([tracking_spec()])
    engine.ingest("llm", "concurrency", "i0", time.time(), 5.0)
    assert engine.flush() == 1
    assert engine.rejects.total == 0


def test_clock_step_back_moves_schedule_back():
    clock = SteppedClock(START)
    engine = Engine([tracking_spec(name="a"), tracking_spec(name="b")], clock=clock)
    assert len(engine.tick()) == 2

    clock.reading = START - 600.0
    assert engine.tick() == []
    assert engine.next_due() == START - 599.0

    clock.reading = START - 599.0
    assert [d.endpoint for d in engine.tick()] == ["a", "b"]


def test_explicit_times_do_not_move_schedule():
    clock = SteppedClock(START)
    engine = Engine([tracking_spec()], clock=clock)
    engine.tick()

    assert engine.tick(START - 600.0) == []
    assert engine.next_due() == START + 1.0


# -- target tracking without PolicyInputs -------------------------------------------------------


class GeneralTargetTracking(TargetTracking):
    """A subclass, so the engine runs it through ``recommend`` like any other policy."""


@given(
    loads=st.lists(
        st.lists(st.none() | st.floats(0.0, 200.0), min_size=3, max_size=3),
        min_size=1,
        max_size=40,
    ),
    mean=st.booleans(),
    events=st.booleans(),
)
def test_target_tracking_shortcut_matches_recommend(loads, mean, events):
    aggregation = Aggregation.MEAN if mean else Aggregation.SUM
    decisions = []
    for policy_type in (TargetTracking, GeneralTargetTracking):
        clock = FakeClock(START)
        spec = EndpointSpec(
            "llm",
            (MetricSpec("concurrency", aggregation=aggregation, stale_after_s=3.0),),
            (policy_type("concurrency", 10.0, window_s=5.0),),
            max_capacity=100,
        )
        engine = Engine([spec], clock=clock, emit="all")
        if events:
            for instance in ("i0", "i1"):
                engine.instance_event("llm", instance, InstanceEvent.READY)
        made = []
        for row in loads:
            for instance, load in enumerate(row):
                if load is not None:
                    engine.ingest("llm", "concurrency", f"i{instance}", clock.now(), load)
            made += engine.tick()
            clock.advance(1.0)
        decisions.append(made)

    shortcut, general = decisions
    assert shortcut == general


def test_series_limit_rejects_new_series_only(clock):
    engine = Engine([tracking_spec()], clock=clock, ingest=IngestConfig(max_series_per_endpoint=3))
    for index in range(3):
        engine.series_id("llm", "concurrency", f"pod-{index}")

    with pytest.raises(TooManySeriesError, match="'llm' has reached its limit of 3 live series"):
        engine.series_id("llm", "concurrency", "pod-3")
    engine.ingest("llm", "concurrency", "pod-4", START, 1.0)
    engine.ingest("llm", "concurrency", "pod-0", START, 1.0)
    accepted = engine.flush()

    assert engine.series_count == 3
    assert accepted == 1
    assert engine.rejects.totals[RejectReason.TOO_MANY_SERIES] == 1


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_invalid_series_limit_raises(limit):
    with pytest.raises(ValueError, match="max_series_per_endpoint"):
        IngestConfig(max_series_per_endpoint=limit)


def test_series_limit_frees_gone_instances(clock):
    engine = Engine([tracking_spec()], clock=clock, ingest=IngestConfig(max_series_per_endpoint=3))
    for index in range(3):
        engine.ingest("llm", "concurrency", f"pod-{index}", START, 1.0)
    engine.flush()
    with pytest.raises(TooManySeriesError):
        engine.series_id("llm", "concurrency", "pod-3")

    engine.instance_event("llm", "pod-0", InstanceEvent.GONE)

    assert engine.series_id("llm", "concurrency", "pod-3") == 3
    with pytest.raises(TooManySeriesError):
        engine.series_id("llm", "concurrency", "pod-4")


def test_series_limit_frees_silent_instances(clock):
    engine = Engine([tracking_spec()], clock=clock, ingest=IngestConfig(max_series_per_endpoint=2))
    stale_after_s = tracking_spec().metrics[0].stale_after_s
    for index in range(2):
        engine.ingest("llm", "concurrency", f"pod-{index}", START, 1.0)
    engine.flush()
    with pytest.raises(TooManySeriesError):
        engine.series_id("llm", "concurrency", "pod-2")

    clock.advance(stale_after_s + 1.0)
    engine.ingest("llm", "concurrency", "pod-2", clock.now(), 1.0)
    engine.ingest("llm", "concurrency", "pod-3", clock.now(), 1.0)
    engine.ingest("llm", "concurrency", "pod-4", clock.now(), 1.0)
    accepted = engine.flush()

    assert accepted == 2
    assert engine.series_count == 4
    assert engine.rejects.totals[RejectReason.TOO_MANY_SERIES] == 1


# -- memory under pod churn ---------------------------------------------------------------------


def test_gone_series_is_dropped_after_its_window(clock):
    engine = Engine([tracking_spec()], clock=clock)
    old_id = engine.series_id("llm", "concurrency", "pod-0")
    engine.ingest_batch([old_id], [clock.now()], [5.0])
    engine.instance_event("llm", "pod-0", InstanceEvent.GONE)
    engine.tick()
    assert engine.series_count == 1

    # The 10 s window uses a table of 16 buckets of 1 s.
    clock.advance(16.0)
    engine.tick()
    accepted = engine.ingest_batch([old_id], [clock.now()], [5.0])
    new_id = engine.series_id("llm", "concurrency", "pod-0")

    assert accepted == 0
    assert engine.rejects.totals[RejectReason.UNKNOWN_SERIES] == 1
    assert new_id != old_id
    assert engine.series_count == 1


@st.composite
def churn_plans(draw) -> list[tuple[float, float, float, float, float, bool]]:
    """Draw 150 instances: start, seconds to ready, seconds serving, silent seconds before
    gone, load, and whether a last sample arrives just after gone."""
    plan = []
    start = START
    for _ in range(150):
        start += draw(st.integers(1, 8))
        plan.append(
            (
                start,
                float(draw(st.integers(0, 5))),
                float(draw(st.integers(3, 40))),
                float(draw(st.sampled_from([0, 0, 3, 15]))),
                draw(st.floats(0.0, 30.0)),
                draw(st.booleans()),
            )
        )
    return plan


def run_churn(engine: Engine, clock: FakeClock, plan, check=None) -> list:
    """Drive ``engine`` through ``plan`` one second at a time; return every decision."""
    steady = engine.series_id("small", "concurrency", "steady")
    decisions = []
    end = max(start + ready + serving + silent for start, ready, serving, silent, *_ in plan)
    while clock.now() <= end + 100.0:
        now = clock.now()
        engine.ingest_batch([steady], [now], [4.0])
        for index, (start, ready, serving, silent, load, late) in enumerate(plan):
            name = f"pod-{index}"
            endpoint = "small" if index % 3 else "large"
            ready_at = start + ready
            gone_at = ready_at + serving + silent
            if now == start:
                engine.instance_event(endpoint, name, InstanceEvent.LAUNCHED)
            if now == ready_at:
                engine.instance_event(endpoint, name, InstanceEvent.READY)
            if ready_at <= now < ready_at + serving:
                engine.ingest(endpoint, "concurrency", name, now, load)
            if now == gone_at:
                engine.instance_event(endpoint, name, InstanceEvent.GONE)
            # A last sample after gone, while the series' samples are still in every ring.
            if late and not silent and now == gone_at + 1.0:
                engine.ingest(endpoint, "concurrency", name, now - 2.0, load)
        decisions.extend(engine.tick())
        if check is not None:
            check(now)
        clock.advance(1.0)
    return decisions


@settings(max_examples=10)
@given(plan=churn_plans())
def test_churn_bounds_series_keeps_decisions(plan):
    specs = [
        tracking_spec(name="small", window_s=10.0, stale_after_s=5.0),
        tracking_spec(name="large", window_s=60.0, stale_after_s=5.0),
    ]
    reference_clock = FakeClock(START)
    reference = Engine(specs, clock=reference_clock)
    # The reference never drops a series.
    reference._store.collect = lambda now: 0
    expected = run_churn(reference, reference_clock, plan)

    clock = FakeClock(START)
    engine = Engine(specs, clock=clock)
    store = engine._store
    peak = {"rows": 0}

    def check(now: float) -> None:
        # Series that may still be read: instances not gone, or gone while one of their
        # samples can still be in the longest ring (64 buckets of 1 s), plus the steady one.
        readable = 1 + sum(
            1
            for start, ready, serving, silent, *_ in plan
            if start <= now <= start + ready + serving + silent + 66.0
        )
        # After each collection, fewer than max(MIN_DROP, rows / 4) rows per table hold
        # droppable series, so two tables hold at most this many series.
        bound = readable + 2 * MIN_DROP + readable // 3 + 1
        assert engine.series_count <= bound
        assert sum(table.rows for table in store.tables) == engine.series_count
        peak["rows"] = max(peak["rows"], max(table.capacity for table in store.tables))

    decisions = run_churn(engine, clock, plan, check)

    assert decisions == expected
    assert reference.series_count == len(plan) + 1
    assert engine.series_count < len(plan) // 2
    # Slots and table rows are reused, so their allocation follows the peak, not the total.
    assert store.size < len(plan) // 2
    assert peak["rows"] <= max(64, 2 * store.size)

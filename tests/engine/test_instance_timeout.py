"""Instances that stop reporting without a ``gone`` event time out."""

from __future__ import annotations

import dataclasses
import logging
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.engine import (
    Decision,
    EndpointSpec,
    Engine,
    EngineConfigError,
    FakeClock,
    InstanceEvent,
    MetricSpec,
    TargetTracking,
)
from warmstart.engine.decision import Stage
from warmstart.server.config import ConfigError, endpoint_spec

from .helpers import DIRECT, START, tracking_spec

# The default timeout of an endpoint whose metrics have the default 10 s stale time.
TIMEOUT_S = 60.0


def ready_engine(
    clock: FakeClock, instances: int = 4, instance_timeout_s: float | None = None, **spec_args
) -> Engine:
    """Return an engine for ``tracking_spec`` with ``instances`` ready instances i0, i1, ..."""
    spec = tracking_spec(initial_capacity=instances, **spec_args)
    spec = dataclasses.replace(spec, instance_timeout_s=instance_timeout_s)
    engine = Engine([spec], clock=clock)
    for index in range(instances):
        engine.instance_event("llm", f"i{index}", InstanceEvent.READY)
    return engine


def run(engine: Engine, clock: FakeClock, seconds: int, reporting: list[str]) -> list[Decision]:
    """Send 1.0 from each of ``reporting`` and tick, once per second; return the decisions."""
    decisions = []
    for _ in range(seconds):
        for name in reporting:
            engine.ingest("llm", "concurrency", name, clock.now(), 1.0)
        decisions.extend(engine.tick())
        clock.advance(1.0)
    return decisions


def timeout_notes(decisions: list[Decision]) -> list[tuple[float, str]]:
    return [(d.at, d.stage("hold").note) for d in decisions if "timed out after" in d.reason]


# -- timing out --------------------------------------------------------------------------------


def test_silent_instance_unblocks_scale_down(clock):
    engine = ready_engine(clock)
    run(engine, clock, 10, ["i0", "i1", "i2", "i3"])
    # i3 stops reporting at 1009 s. Its stale series blocks scale-down until the timeout.
    held = run(engine, clock, int(TIMEOUT_S), ["i0", "i1", "i2"])
    after = run(engine, clock, 5, ["i0", "i1", "i2"])

    assert all(d.desired == 4 for d in held[10:])
    assert not held[-1].recommendations[0].scale_down_allowed
    assert after[0].at == START + 9.0 + TIMEOUT_S + 1.0
    assert after[0].recommendations[0].scale_down_allowed
    assert after[0].desired == 1
    assert engine.series_count == 3


def test_timed_out_instance_keeps_capacity(clock):
    engine = ready_engine(clock)
    run(engine, clock, 10, ["i0", "i1", "i2", "i3"])
    before = engine.state("llm")
    run(engine, clock, int(TIMEOUT_S) + 5, ["i0", "i1", "i2"])
    after = engine.state("llm")

    # Capacity follows instance events only, so i3 stays ready until its gone event.
    assert (after.ready, after.draining) == (before.ready, before.draining) == (4, 0)
    assert (before.timed_out, after.timed_out) == (0, 1)
    engine.instance_event("llm", "i3", InstanceEvent.GONE)
    assert engine.state("llm").ready == 3
    assert engine.state("llm").timed_out == 0


def test_timeout_note_names_instance_once(clock):
    engine = ready_engine(clock)
    run(engine, clock, 10, ["i0", "i1", "i2", "i3"])
    decisions = run(engine, clock, int(TIMEOUT_S) + 10, ["i0", "i1", "i2"])

    notes = timeout_notes(decisions)
    expected = (
        "timed out after 60s without samples or events and no longer hold scale-down: "
        "instance 'i3' silent since "
    )
    assert notes == [(START + 70.0, expected + f"{START + 9.0:.3f}s")]
    (noted,) = [d for d in decisions if d.at == START + 70.0]
    assert noted.reason.endswith("; hold: " + expected + f"{START + 9.0:.3f}s")


def test_timeout_note_follows_blocked_hold_note(clock):
    engine = ready_engine(clock, behavior=dataclasses.replace(DIRECT, restart_hold_s=1000.0))
    run(engine, clock, 10, ["i0", "i1", "i2", "i3"])
    decisions = run(engine, clock, int(TIMEOUT_S) + 2, ["i0", "i1", "i2"])

    (noted,) = [d for d in decisions if "timed out after" in d.reason]
    hold_note = noted.stage("hold").note
    assert hold_note.startswith("scale-down blocked: observed ")
    assert "; timed out after 60s" in hold_note
    assert noted.reason.endswith("; hold: " + hold_note)


@pytest.mark.parametrize("endpoints", [1, 40])
def test_timeout_note_on_every_decision_path(clock, endpoints):
    # 40 target-tracking endpoints are decided together in numpy (``TrackingGroups``).
    specs = [
        dataclasses.replace(tracking_spec(initial_capacity=2), name=f"e{index}")
        for index in range(endpoints)
    ]
    engine = Engine(specs, clock=clock)
    for _ in range(10):
        for index in range(endpoints):
            engine.ingest(f"e{index}", "concurrency", "a", clock.now(), 1.0)
            engine.ingest(f"e{index}", "concurrency", "b", clock.now(), 1.0)
        engine.tick()
        clock.advance(1.0)
    noted = []
    for _ in range(int(TIMEOUT_S) + 2):
        for index in range(endpoints):
            engine.ingest(f"e{index}", "concurrency", "a", clock.now(), 1.0)
        noted.extend(d for d in engine.evaluate() if "instance 'b' silent since" in d.reason)
        clock.advance(1.0)

    assert sorted(d.endpoint for d in noted) == sorted(spec.name for spec in specs)
    assert all(d.at == START + 70.0 for d in noted)


def test_timeout_is_logged(clock, caplog):
    engine = ready_engine(clock)
    run(engine, clock, 10, ["i0", "i1", "i2", "i3"])
    with caplog.at_level(logging.WARNING, logger="warmstart.engine"):
        run(engine, clock, int(TIMEOUT_S) + 5, ["i0", "i1", "i2"])

    messages = [r.getMessage() for r in caplog.records if "timed out after" in r.getMessage()]
    assert messages == [
        "endpoint llm: 1 instance(s) timed out after 60s without samples or events and no "
        "longer hold scale-down: "
        f"instance 'i3' silent since {START + 9.0:.3f}s"
    ]


def test_timeout_note_counts_unnamed_instances(clock):
    engine = ready_engine(clock, instances=8)
    run(engine, clock, 10, [f"i{index}" for index in range(8)])
    decisions = run(engine, clock, int(TIMEOUT_S) + 2, ["i0"])

    ((_, note),) = timeout_notes(decisions)
    assert note.count("instance 'i") == 5
    assert note.endswith("silent since 1009.000s and 2 more")


def test_instance_timeout_can_be_disabled(clock):
    engine = ready_engine(clock, instance_timeout_s=math.inf)
    run(engine, clock, 10, ["i0", "i1", "i2", "i3"])
    decisions = run(engine, clock, 10 * int(TIMEOUT_S), ["i0", "i1", "i2"])

    assert timeout_notes(decisions) == []
    assert all(d.desired == 4 for d in decisions[10:])
    assert engine.state("llm").ready == 4


def test_shorter_timeout_applies(clock):
    engine = ready_engine(clock, instance_timeout_s=15.0)
    run(engine, clock, 10, ["i0", "i1", "i2", "i3"])
    decisions = run(engine, clock, 20, ["i0", "i1", "i2"])

    assert [at for at, _ in timeout_notes(decisions)] == [START + 25.0]


# -- what counts as silent ---------------------------------------------------------------------


def test_launched_instance_never_times_out(clock):
    engine = ready_engine(clock, instances=1)
    engine.instance_event("llm", "slow", InstanceEvent.LAUNCHED)
    run(engine, clock, 10 * int(TIMEOUT_S), ["i0"])
    engine.instance_event("llm", "slow", InstanceEvent.READY)

    state = engine.state("llm")
    assert state.ready == 2
    assert state.time_to_ready_s == 10 * TIMEOUT_S


def test_ready_instance_without_samples_times_out(clock):
    engine = ready_engine(clock, instances=2)
    decisions = run(engine, clock, int(TIMEOUT_S) + 5, ["i0"])

    assert [at for at, _ in timeout_notes(decisions)] == [START + TIMEOUT_S + 1.0]
    assert not decisions[-7].recommendations[0].scale_down_allowed
    # The ready instance that never reported no longer counts as missing data.
    assert decisions[-1].recommendations[0].scale_down_allowed
    assert engine.state("llm").ready == 2


def test_instance_event_restarts_silence(clock):
    engine = ready_engine(clock)
    run(engine, clock, 10, ["i0", "i1", "i2", "i3"])
    run(engine, clock, 30, ["i0", "i1", "i2"])
    engine.instance_event("llm", "i3", InstanceEvent.DRAINING)
    decisions = run(engine, clock, int(TIMEOUT_S) + 5, ["i0", "i1", "i2"])

    assert [at for at, _ in timeout_notes(decisions)] == [START + 40.0 + TIMEOUT_S + 1.0]


def test_instance_reporting_one_metric_stays(clock):
    spec = EndpointSpec(
        "llm",
        (MetricSpec("concurrency"), MetricSpec("queue")),
        (TargetTracking("concurrency", 10.0, window_s=10.0),),
        behavior=DIRECT,
        initial_capacity=2,
    )
    engine = Engine([spec], clock=clock)
    for _ in range(10):
        for name in ("i0", "i1"):
            engine.ingest("llm", "queue", name, clock.now(), 1.0)
        engine.tick()
        clock.advance(1.0)
    decisions = run(engine, clock, 3 * int(TIMEOUT_S), ["i0", "i1"])
    assert timeout_notes(decisions) == []
    assert engine.series_count == 4

    # Once i1 stops reporting its other metric too, it times out.
    decisions = run(engine, clock, int(TIMEOUT_S) + 2, ["i0"])
    assert len(timeout_notes(decisions)) == 1
    assert engine.series_count == 2


def test_endpoint_without_instance_events_times_out(clock):
    engine = Engine([tracking_spec(initial_capacity=2)], clock=clock)
    run(engine, clock, 10, ["i0", "i1"])
    decisions = run(engine, clock, int(TIMEOUT_S) + 5, ["i0"])

    assert [at for at, _ in timeout_notes(decisions)] == [START + 70.0]
    # Capacity still follows the decisions, because the engine never had an instance event.
    assert engine.state("llm").current == decisions[-1].desired


# -- coming back ---------------------------------------------------------------------------------


def test_timed_out_instance_comes_back_with_samples(clock):
    engine = ready_engine(clock, instances=2)
    run(engine, clock, 10, ["i0", "i1"])
    run(engine, clock, int(TIMEOUT_S) + 2, ["i0"])
    assert engine.series_count == 1

    decisions = run(engine, clock, 3, ["i0", "i1"])

    # A new, active series counts its samples.
    assert engine.series_count == 2
    assert "sum over 2 instance(s)" in decisions[-1].reason
    assert engine._ordered[0].instances.silent == set()


def test_timed_out_instance_times_out_again(clock):
    engine = ready_engine(clock, instances=2)
    run(engine, clock, 10, ["i0", "i1"])
    first = run(engine, clock, int(TIMEOUT_S) + 2, ["i0"])
    run(engine, clock, 5, ["i0", "i1"])
    second = run(engine, clock, int(TIMEOUT_S) + 2, ["i0"])

    assert [at for at, _ in timeout_notes(first)] == [START + 70.0]
    assert [at for at, _ in timeout_notes(second)] == [START + 76.0 + TIMEOUT_S + 1.0]


def test_instance_numbers_are_reused_under_churn(clock):
    engine = ready_engine(clock, instances=1)
    for index in range(300):
        name = f"pod-{index}"
        engine.instance_event("llm", name, InstanceEvent.READY)
        run(engine, clock, 2, ["i0", name])
        if index % 2:
            engine.instance_event("llm", name, InstanceEvent.GONE)
    run(engine, clock, 2 * int(TIMEOUT_S), ["i0"])
    instances = engine._store.instances

    # The timed-out half keeps its number while it has a phase; the gone half frees it.
    assert len(instances.numbers) == 1 + 150
    assert instances.size <= 1 + 150 + 64
    assert engine.series_count == 1


def test_removed_endpoint_frees_instance_numbers(clock):
    engine = ready_engine(clock, instances=3)
    engine.remove_endpoint("llm")

    assert engine._store.instances.numbers == {}


# -- settings ------------------------------------------------------------------------------------


def test_default_timeout_is_six_longest_stale_times():
    spec = EndpointSpec(
        "llm",
        (MetricSpec("a", stale_after_s=5.0), MetricSpec("b", stale_after_s=20.0)),
        (TargetTracking("a", 1.0),),
    )

    assert spec.instance_timeout_s is None
    assert spec.effective_instance_timeout_s == 120.0
    assert tracking_spec().effective_instance_timeout_s == TIMEOUT_S


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan])
def test_invalid_instance_timeout_raises(value):
    with pytest.raises(EngineConfigError, match="instance_timeout_s must be positive seconds"):
        dataclasses.replace(tracking_spec(), instance_timeout_s=value)


def config_table(**extra) -> dict:
    return {
        "metrics": [{"name": "concurrency"}],
        "policies": [{"type": "target_tracking", "metric": "concurrency", "target": 8.0}],
        **extra,
    }


def test_config_sets_instance_timeout():
    assert endpoint_spec("a", config_table(instance_timeout_s=30)).instance_timeout_s == 30.0
    assert endpoint_spec("a", config_table(instance_timeout_s=math.inf)).instance_timeout_s == (
        math.inf
    )
    preset_table = {"preset": "hpa", "metric": "rps", "target": 5.0, "instance_timeout_s": 45}
    assert endpoint_spec("a", preset_table).instance_timeout_s == 45.0


@pytest.mark.parametrize("value", ["60", True, 0])
def test_config_rejects_bad_instance_timeout(value):
    with pytest.raises(ConfigError, match=r"endpoints\.a.*instance_timeout_s.* must be"):
        endpoint_spec("a", config_table(instance_timeout_s=value))


# -- properties ----------------------------------------------------------------------------------

_REASON_NOTE = re.compile(r"; (?:hold: )?timed out after [^;]*")
_STAGE_NOTE = re.compile(r"(?:^|; )timed out after [^;]*$")


def without_timeout_note(decision: Decision) -> Decision:
    """Return ``decision`` without the note that names timed-out instances."""
    stages = tuple(Stage(s.name, s.value, _STAGE_NOTE.sub("", s.note)) for s in decision.stages)
    reason = _REASON_NOTE.sub("", decision.reason)
    return dataclasses.replace(decision, reason=reason, stages=stages)


def timed_out_count(reason: str) -> int:
    """Return how many instances a decision's reason names as timed out, counting "and N
    more"."""
    unnamed = re.search(r"silent since [0-9.]+s and ([0-9]+) more", reason)
    return reason.count("' silent since ") + (int(unnamed.group(1)) if unnamed else 0)


@st.composite
def silent_plans(draw) -> list[tuple[float, float, float, float, float, float, bool]]:
    """Draw up to 12 instances: launch time, seconds to ready, seconds reporting, seconds
    silent, seconds reporting again, load, and whether a ``gone`` event follows the last
    sample after 3 s (else the instance stays silent)."""
    return [
        (
            START + draw(st.integers(0, 30)),
            float(draw(st.integers(0, 5))),
            float(draw(st.integers(1, 30))),
            float(draw(st.integers(0, 40))),
            float(draw(st.sampled_from([0, 0, 5]))),
            # Whole loads, so sums over series in any order are exact.
            float(draw(st.integers(0, 30))),
            draw(st.booleans()),
        )
        for _ in range(draw(st.integers(1, 12)))
    ]


def drive(engine: Engine, clock: FakeClock, plan) -> list[Decision]:
    """Play ``plan`` one second at a time and return every decision."""
    decisions = []
    steady = engine.series_id("small", "concurrency", "steady")
    end = max(sum(entry[:5]) for entry in plan) + 100.0
    while clock.now() <= end:
        now = clock.now()
        engine.ingest_batch([steady], [now], [4.0])
        for index, (start, ready, reporting, silent, again, load, gone) in enumerate(plan):
            name = f"pod-{index}"
            endpoint = "small" if index % 2 else "large"
            ready_at = start + ready
            again_at = ready_at + reporting + silent
            last_at = again_at + again - 1.0 if again else ready_at + reporting - 1.0
            if now == start:
                engine.instance_event(endpoint, name, InstanceEvent.LAUNCHED)
            if now == ready_at:
                engine.instance_event(endpoint, name, InstanceEvent.READY)
            if ready_at <= now < ready_at + reporting or again_at <= now < again_at + again:
                engine.ingest(endpoint, "concurrency", name, now, load)
            if gone and now == last_at + 3.0:
                engine.instance_event(endpoint, name, InstanceEvent.GONE)
        decisions.extend(engine.tick())
        clock.advance(1.0)
    return decisions


def two_endpoints(**changes) -> list[EndpointSpec]:
    specs = [
        tracking_spec(name="small", window_s=2.0, stale_after_s=5.0),
        tracking_spec(name="large", window_s=2.0, stale_after_s=5.0),
    ]
    return [dataclasses.replace(spec, **changes) for spec in specs]


@settings(max_examples=30)
@given(plan=silent_plans())
def test_disabled_timeout_equals_engine_without_timeouts(plan):
    reference_clock = FakeClock(START)
    reference = Engine(two_endpoints(), clock=reference_clock)
    # The reference never looks for silent instances.
    reference._time_out_silent = lambda now: None
    expected = drive(reference, reference_clock, plan)

    clock = FakeClock(START)
    engine = Engine(two_endpoints(instance_timeout_s=math.inf), clock=clock)

    assert drive(engine, clock, plan) == expected


@settings(max_examples=30)
@given(plan=silent_plans())
def test_timed_out_instance_counts_as_fresh_and_idle(plan):
    # The timeout (3 s) fires before a silent series turns stale (5 s), and after its samples
    # have left the 2 s window. So a timed-out instance must count like an instance whose
    # series never turn stale: no load, not stale, not missing, and still in capacity.
    never_stale = []
    for spec in two_endpoints(instance_timeout_s=math.inf):
        metrics = tuple(dataclasses.replace(m, stale_after_s=1e6) for m in spec.metrics)
        never_stale.append(dataclasses.replace(spec, metrics=metrics))
    reference_clock = FakeClock(START)
    expected = drive(Engine(never_stale, clock=reference_clock), reference_clock, plan)

    clock = FakeClock(START)
    decisions = drive(Engine(two_endpoints(instance_timeout_s=3.0), clock=clock), clock, plan)

    assert [without_timeout_note(d) for d in decisions] == expected
    # Every silence of 4 s or more, and every silent instance without a gone event, ends in
    # one timeout.
    silences = sum(
        (silent >= 4.0 and again > 0) + (not gone) for _, _, _, silent, again, _, gone in plan
    )
    assert sum(timed_out_count(d.reason) for d in decisions) == silences

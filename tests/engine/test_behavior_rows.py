"""``run_rows`` on numpy rows against ``run_stages`` per endpoint, on random inputs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.engine import Behavior, Decision, Recommendation
from warmstart.engine.behavior import BehaviorState, longest_rate_period_s, run_stages
from warmstart.engine.behavior_rows import (
    ROW_LIMIT,
    BehaviorRows,
    RowInputs,
    row_decision,
    run_rows,
)

from .behavior_strategies import behaviors, recommendations

# The rows take only reactive recommendations, as target tracking makes. Most are valid and
# allow scale-down, and zero is frequent, so the later stages and scale to zero act often.
mostly = st.sampled_from([True] * 5 + [False])
reactive = recommendations.flatmap(
    lambda r: st.builds(
        dataclasses.replace,
        st.just(r),
        desired=st.just(0) | st.integers(0, 40),
        valid=mostly,
        scale_down_allowed=mostly,
        floor_only=st.just(False),
    )
)


@dataclasses.dataclass
class _Endpoint:
    behavior: Behavior
    min_capacity: int
    max_capacity: int
    restart_hold_s: float
    current: int
    state: BehaviorState = dataclasses.field(default_factory=BehaviorState)


@st.composite
def endpoints(draw: st.DrawFn) -> _Endpoint:
    min_capacity = draw(st.integers(0, 3))
    max_capacity = min_capacity + draw(st.integers(0, 40))
    return _Endpoint(
        behavior=draw(behaviors),
        min_capacity=min_capacity,
        max_capacity=max_capacity,
        restart_hold_s=draw(st.sampled_from([0.0, 10.0, 120.0])),
        current=draw(st.integers(0, 20)),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[_Endpoint], list[tuple[float, list[tuple]]]]:
    fleet = draw(st.lists(endpoints(), min_size=1, max_size=5))
    per_endpoint = st.tuples(
        st.lists(reactive, min_size=1, max_size=3),
        st.integers(-3, 3),
        # Idle times at and around the scale-to-zero delays, as well as arbitrary ones.
        st.sampled_from([0.0, 4.5, 5.0, 30.0]) | st.floats(0.0, 60.0),
        st.booleans(),
    )
    # Steps of zero and backward steps repeat or reorder evaluation times, as explicit
    # ``Engine.evaluate(now=...)`` calls can.
    step = st.tuples(
        st.sampled_from([-2.0, 0.0, 0.5, 1.0, 3.0, 15.0, 61.0]),
        st.lists(per_endpoint, min_size=len(fleet), max_size=len(fleet)),
    )
    return fleet, draw(st.lists(step, min_size=1, max_size=25))


def _inputs(per_endpoint: list[list[Recommendation]]) -> RowInputs:
    start = []
    endpoint = []
    flat: list[Recommendation] = []
    for index, recs in enumerate(per_endpoint):
        start.append(len(flat))
        endpoint.extend([index] * len(recs))
        flat.extend(recs)
    return RowInputs(
        start=np.array(start, dtype=np.int64),
        endpoint=np.array(endpoint, dtype=np.int64),
        valid=np.array([r.valid for r in flat]),
        desired=np.array([float(r.desired) for r in flat]),
        usage_ratio=np.array([math.nan if r.usage_ratio is None else r.usage_ratio for r in flat]),
        scale_down_allowed=np.array([r.scale_down_allowed for r in flat]),
        exact=np.ones(len(flat), dtype=np.bool_),
    )


@settings(max_examples=120)
@given(scenario=scenarios())
def test_rows_match_run_stages(scenario):
    fleet, steps = scenario
    table = BehaviorRows()
    rows = []
    for endpoint in fleet:
        row = table.add(
            endpoint.behavior,
            endpoint.min_capacity,
            endpoint.max_capacity,
            endpoint.restart_hold_s,
            longest_rate_period_s(endpoint.behavior),
            BehaviorState(),
        )
        assert row is not None
        rows.append(row)
    row_ids = np.array(rows, dtype=np.int64)

    now = 1000.0
    for advance_s, per_endpoint in steps:
        now += advance_s
        recs = [recs for recs, _, _, _ in per_endpoint]
        stages = run_rows(
            table,
            row_ids,
            now,
            np.array([e.current for e in fleet], dtype=np.int64),
            np.array([idle_s for _, _, idle_s, _ in per_endpoint]),
            np.array([woken for _, _, _, woken in per_endpoint]),
            _inputs(recs),
        )
        for index, (endpoint, (own_recs, drift, idle_s, woken)) in enumerate(
            zip(fleet, per_endpoint, strict=True)
        ):
            expected = run_stages(
                endpoint.behavior,
                longest_rate_period_s(endpoint.behavior),
                endpoint.state,
                "llm",
                now,
                endpoint.current,
                endpoint.min_capacity,
                endpoint.max_capacity,
                endpoint.restart_hold_s,
                idle_s,
                woken,
                own_recs,
            )
            values = stages.values[index]
            assert values[0] == 1
            decision = row_decision(
                "llm",
                endpoint.behavior,
                endpoint.min_capacity,
                endpoint.max_capacity,
                endpoint.restart_hold_s,
                now,
                endpoint.current,
                own_recs,
                values,
                stages.observed_s[index],
                stages.cooldown_since_s[index],
            )
            assert decision == expected
            assert table.state(rows[index]) == endpoint.state
            # Capacity does not always follow the decision, as when a launch fails.
            endpoint.current = max(0, expected.desired + drift)


def test_rows_report_inexact_rows_unchanged():
    table = BehaviorRows()
    behavior = Behavior()
    row = table.add(behavior, 1, 10, 0.0, longest_rate_period_s(behavior), BehaviorState())
    assert row is not None
    huge = Recommendation("a", ROW_LIMIT + 5, True, "huge", True, False, 9.0)
    stages = run_rows(
        table,
        np.array([row], dtype=np.int64),
        1000.0,
        np.array([3], dtype=np.int64),
        np.array([0.0]),
        np.array([False]),
        _inputs([[huge]]),
    )
    assert stages.values[0][0] == 0
    assert table.state(row) == BehaviorState()


def test_state_that_does_not_fit_gets_no_row():
    table = BehaviorRows()
    behavior = Behavior()
    state = BehaviorState(started_at=5.0)
    state.down_candidates.append((5.0, ROW_LIMIT))
    row = table.add(behavior, 1, 10, 0.0, longest_rate_period_s(behavior), state)
    assert row is None


def test_row_state_round_trips():
    table = BehaviorRows()
    behavior = Behavior()
    state = BehaviorState(started_at=5.0, last_scale_up_at=7.0, last_change_at=8.0)
    state.up_candidates.extend([(6.0, 2), (7.0, 4)])
    state.down_candidates.extend([(6.0, 9), (7.0, 4), (8.0, 3)])
    state.scale_events.extend([(7.0, 2), (8.0, -1)])
    row = table.add(behavior, 1, 10, 0.0, longest_rate_period_s(behavior), state)
    assert row is not None
    assert table.state(row) == state


def test_freed_row_is_reused_with_new_settings():
    table = BehaviorRows()
    first = table.add(Behavior(), 1, 10, 0.0, 15.0, BehaviorState(started_at=1.0))
    assert first is not None
    table.remove(first)
    second = table.add(Behavior(tolerance=0.3), 2, 20, 5.0, 15.0, BehaviorState())
    assert second == first
    assert table.state(second) == BehaviorState()
    assert table.tolerance[second] == 0.3
    assert table.max_capacity[second] == 20


def test_rows_refuse_unbounded_settings():
    table = BehaviorRows()
    behavior = Behavior()
    assert table.add(behavior, 1, ROW_LIMIT, 0.0, 15.0, BehaviorState()) is None


def test_decision_fields_are_plain_python():
    """Decisions from rows hold Python numbers, not numpy scalars, so they print alike."""
    table = BehaviorRows()
    behavior = Behavior()
    row = table.add(behavior, 1, 10, 0.0, longest_rate_period_s(behavior), BehaviorState())
    assert row is not None
    rec = Recommendation("a", 4, True, "load", True, False, 2.0)
    stages = run_rows(
        table,
        np.array([row], dtype=np.int64),
        1000.0,
        np.array([2], dtype=np.int64),
        np.array([0.0]),
        np.array([False]),
        _inputs([[rec]]),
    )
    decision: Decision = row_decision(
        "llm", behavior, 1, 10, 0.0, 1000.0, 2, [rec], stages.values[0], 0.0, 0.0
    )
    assert all(type(stage.value) is int for stage in decision.stages)
    assert type(decision.desired) is int

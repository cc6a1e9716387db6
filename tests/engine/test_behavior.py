"""Tests for the behavior pipeline: tolerance, holds, stabilization, rate limits, cooldowns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmstart.engine import (
    STAGES,
    Behavior,
    Capacity,
    EngineConfigError,
    RateKind,
    RatePolicy,
    Recommendation,
    ScalingRules,
    SelectPolicy,
)
from warmstart.engine.behavior import BehaviorState, DecisionContext, decide

NO_RATES = ScalingRules(0.0, ())


def context(now, current, *, min_capacity=0, max_capacity=1000, hold=0.0, idle=None, woken=False):
    return DecisionContext(
        endpoint="llm",
        now=now,
        capacity=Capacity(current, current, 0),
        min_capacity=min_capacity,
        max_capacity=max_capacity,
        restart_hold_s=hold,
        idle_s=idle,
        woken=woken,
    )


def rec(desired, *, valid=True, ratio=None, down=True, floor=False, name="p"):
    return Recommendation(name, desired, valid, "test", down, floor, ratio)


def run(behavior, steps, *, start_current, **kwargs):
    """Feed (now, desired) steps, applying each decision as the next current capacity."""
    state = BehaviorState()
    current = start_current
    decisions = []
    for now, desired in steps:
        decision = decide(behavior, state, context(now, current, **kwargs), [rec(desired)])
        decisions.append(decision)
        current = decision.desired
    return decisions


def test_stages_are_recorded_in_order():
    decision = decide(Behavior(), BehaviorState(), context(0.0, 2), [rec(3)])
    assert tuple(s.name for s in decision.stages) == STAGES
    assert decision.stage("raw").value == 3


def test_scale_down_stabilization_takes_max_over_window():
    behavior = Behavior(scale_up=NO_RATES, scale_down=ScalingRules(300.0, ()), tolerance=0.0)
    decisions = run(
        behavior, [(0.0, 10), (100.0, 4), (200.0, 6), (299.0, 3), (301.0, 3)], start_current=10
    )
    assert [d.desired for d in decisions] == [10, 10, 10, 10, 6]
    assert "max over last 300s" in decisions[1].reason


def test_scale_up_stabilization_takes_min_over_window():
    behavior = Behavior(scale_up=ScalingRules(60.0, ()), scale_down=NO_RATES, tolerance=0.0)
    steps = [(0.0, 2), (10.0, 8), (30.0, 9), (69.0, 9), (91.0, 9)]
    decisions = run(behavior, steps, start_current=2)
    assert [d.desired for d in decisions] == [2, 2, 2, 8, 9]


def test_hpa_default_scale_up_is_four_pods_or_double():
    decisions = run(Behavior(), [(0.0, 20)], start_current=2)
    assert decisions[0].desired == 6
    decisions = run(Behavior(), [(0.0, 100)], start_current=10)
    assert decisions[0].desired == 20


def test_hpa_scale_up_period_counts_earlier_changes():
    decisions = run(Behavior(), [(0.0, 100), (5.0, 100), (15.0, 100)], start_current=10)
    assert [d.desired for d in decisions] == [20, 20, 40]


def test_hpa_documented_scale_down_policy_example():
    # Kubernetes documents: 80 replicas, policies of 4 pods and 10 % per 60 s with the larger
    # change selected, scaling to 10: the first step removes 8, the next 72 -> 64.
    down = ScalingRules(
        0.0,
        (RatePolicy(RateKind.PODS, 4, 60), RatePolicy(RateKind.PERCENT, 10, 60)),
        SelectPolicy.MAX,
    )
    behavior = Behavior(scale_up=NO_RATES, scale_down=down, tolerance=0.0)
    decisions = run(behavior, [(0.0, 10), (30.0, 10), (60.0, 10)], start_current=80)
    assert [d.desired for d in decisions] == [72, 72, 64]


def test_select_min_uses_smallest_change():
    down = ScalingRules(
        0.0,
        (RatePolicy(RateKind.PODS, 4, 60), RatePolicy(RateKind.PERCENT, 10, 60)),
        SelectPolicy.MIN,
    )
    behavior = Behavior(scale_up=NO_RATES, scale_down=down, tolerance=0.0)
    assert run(behavior, [(0.0, 10)], start_current=80)[0].desired == 76


def test_disabled_select_blocks_direction():
    behavior = Behavior(
        scale_up=NO_RATES,
        scale_down=ScalingRules(0.0, (), SelectPolicy.DISABLED),
        tolerance=0.0,
    )
    assert run(behavior, [(0.0, 1)], start_current=5)[0].desired == 5


def test_percent_rate_from_zero_counts_one_instance():
    up = ScalingRules(0.0, (RatePolicy(RateKind.PERCENT, 100, 15),))
    behavior = Behavior(scale_up=up, scale_down=NO_RATES, tolerance=0.0)
    assert run(behavior, [(0.0, 10)], start_current=0)[0].desired == 2


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        pytest.param(1.05, 2, id="inside-band-up"),
        pytest.param(0.95, 2, id="inside-band-down"),
        pytest.param(1.2, 3, id="outside-band"),
    ],
)
def test_tolerance_band_keeps_current(ratio, expected):
    behavior = Behavior(scale_up=NO_RATES, scale_down=NO_RATES, tolerance=0.1)
    desired = 3 if ratio > 1 else 1
    decision = decide(behavior, BehaviorState(), context(0.0, 2), [rec(desired, ratio=ratio)])
    assert decision.desired == expected


def test_invalid_policy_blocks_scale_down_but_not_scale_up():
    behavior = Behavior(scale_up=NO_RATES, scale_down=NO_RATES, tolerance=0.0)
    down = decide(
        behavior,
        BehaviorState(),
        context(0.0, 5),
        [rec(1, name="a"), rec(5, valid=False, name="b")],
    )
    up = decide(
        behavior,
        BehaviorState(),
        context(0.0, 5),
        [rec(9, name="a"), rec(5, valid=False, name="b")],
    )
    assert down.desired == 5
    assert "no data for b" in down.reason
    assert up.desired == 9


def test_forecast_alone_cannot_scale_down():
    behavior = Behavior(scale_up=NO_RATES, scale_down=NO_RATES, tolerance=0.0)
    decision = decide(behavior, BehaviorState(), context(0.0, 5), [rec(2, floor=True)])
    assert decision.desired == 5


def test_forecast_is_a_floor_under_reactive_policy():
    behavior = Behavior(scale_up=NO_RATES, scale_down=NO_RATES, tolerance=0.0)
    decision = decide(
        behavior,
        BehaviorState(),
        context(0.0, 5),
        [rec(2, name="reactive"), rec(4, floor=True, name="forecast")],
    )
    assert decision.desired == 4
    assert decision.policy == "forecast"


def test_restart_hold_blocks_scale_down_until_window_observed():
    behavior = Behavior(scale_up=NO_RATES, scale_down=NO_RATES, tolerance=0.0)
    state = BehaviorState()
    first = decide(behavior, state, context(0.0, 5, hold=60.0), [rec(2)])
    later = decide(behavior, state, context(59.0, 5, hold=60.0), [rec(2)])
    after = decide(behavior, state, context(60.0, 5, hold=60.0), [rec(2)])
    assert (first.desired, later.desired, after.desired) == (5, 5, 2)


def test_scale_up_cooldown_blocks_next_scale_up():
    behavior = Behavior(
        scale_up=ScalingRules(0.0, (), cooldown_s=60.0), scale_down=NO_RATES, tolerance=0.0
    )
    decisions = run(behavior, [(0.0, 3), (30.0, 6), (60.0, 6)], start_current=1)
    assert [d.desired for d in decisions] == [3, 3, 6]
    assert "cooldown" in decisions[1].reason


def test_scale_down_cooldown_counts_any_change():
    behavior = Behavior(
        scale_up=NO_RATES, scale_down=ScalingRules(0.0, (), cooldown_s=300.0), tolerance=0.0
    )
    decisions = run(behavior, [(0.0, 8), (200.0, 2), (300.0, 2)], start_current=4)
    assert [d.desired for d in decisions] == [8, 8, 2]


def test_bounds_clamp_desired():
    decision = decide(
        Behavior(scale_up=NO_RATES),
        BehaviorState(),
        context(0.0, 5, min_capacity=2, max_capacity=6),
        [rec(50)],
    )
    assert decision.desired == 6
    assert "clamped" in decision.reason


def test_scale_to_zero_waits_for_idle_period():
    behavior = Behavior(
        scale_up=NO_RATES, scale_down=NO_RATES, tolerance=0.0, scale_to_zero_after_s=30.0
    )
    busy = decide(behavior, BehaviorState(), context(0.0, 1, idle=10.0), [rec(0)])
    idle = decide(behavior, BehaviorState(), context(0.0, 1, idle=30.0), [rec(0)])
    assert busy.desired == 1
    assert idle.desired == 0


def test_first_sample_at_zero_scales_to_one():
    behavior = Behavior(scale_up=ScalingRules(0.0, (), cooldown_s=600.0), scale_down=NO_RATES)
    decision = decide(behavior, BehaviorState(), context(0.0, 0, woken=True), [rec(0)])
    assert decision.desired == 1


@given(
    steps=st.lists(st.tuples(st.floats(0, 20), st.integers(0, 500)), min_size=1, max_size=40),
    start=st.integers(0, 500),
    bounds=st.tuples(st.integers(0, 50), st.integers(0, 300)).map(sorted),
)
def test_decisions_stay_within_bounds(steps, start, bounds):
    low, high = bounds
    now = 0.0
    timeline = []
    for gap, desired in steps:
        now += gap
        timeline.append((now, desired))
    for decision in run(
        Behavior(), timeline, start_current=start, min_capacity=low, max_capacity=high
    ):
        assert low <= decision.desired <= high


@pytest.mark.parametrize(
    "factory",
    [
        pytest.param(lambda: Behavior(tolerance=1.0), id="tolerance-one"),
        pytest.param(lambda: Behavior(restart_hold_s=-1.0), id="negative-hold"),
        pytest.param(lambda: ScalingRules(stabilization_window_s=-1.0), id="negative-window"),
        pytest.param(lambda: RatePolicy(RateKind.PODS, 0, 15), id="zero-rate"),
        pytest.param(lambda: RatePolicy(RateKind.PODS, 1, 0), id="zero-period"),
    ],
)
def test_invalid_settings_raise_config_error(factory):
    with pytest.raises(EngineConfigError):
        factory()


def test_shared_stages_keep_value_types():
    """Decisions share stages by value; a float or numpy value must not get an int's stage."""
    behavior = Behavior(NO_RATES, NO_RATES, tolerance=0.0, restart_hold_s=0.0)
    decide(behavior, BehaviorState(), context(0.0, 3), [rec(3)])
    decide(behavior, BehaviorState(), context(0.0, 3, hold=10.0), [rec(2)])

    unchanged = decide(behavior, BehaviorState(), context(0.0, 3.0), [rec(3.0)])
    held = decide(behavior, BehaviorState(), context(0.0, 3.0, hold=10.0), [rec(2.0)])

    assert all(type(stage.value) is float for stage in unchanged.stages)
    assert held.stage("hold").note
    assert all(type(stage.value) is float for stage in held.stages)

"""Tests for stable and panic mode with Knative KPA semantics."""

from __future__ import annotations

import math

import pytest

from warmstart.engine import Burst, EngineConfigError
from warmstart.engine.policy.burst import BurstState
from warmstart.testing import policy_inputs as inputs

POLICY = Burst("concurrency", target=10.0)


def step(stable, panic, state, *, now, current, ready=None, pending=0):
    observed = inputs(
        {POLICY.stable_query: stable, POLICY.panic_query: panic},
        current=current,
        ready=ready,
        pending=pending,
        now=now,
    )
    return POLICY.recommend(observed, state)


def test_knative_documented_example_concurrency_ten():
    # Knative documents: with a concurrency target of 10, 50 concurrent requests give 5 pods.
    policy = Burst("concurrency", target=10.0)
    observed = inputs({policy.stable_query: 50.0, policy.panic_query: 50.0}, current=5)
    recommendation, state = policy.recommend(observed, BurstState())
    assert recommendation.desired == 5
    assert not state.panicking


def test_target_utilization_example():
    # 100 concurrent requests, container concurrency 10 at 70 % target utilization: 15 pods.
    policy = Burst("concurrency", target=7.0)
    observed = inputs({policy.stable_query: 100.0, policy.panic_query: 100.0}, current=15)
    recommendation, _ = policy.recommend(observed, BurstState())
    assert recommendation.desired == 15


def test_enters_panic_at_threshold():
    recommendation, state = step(20.0, 40.0, BurstState(), now=0.0, current=2)
    assert state.panicking
    assert recommendation.desired == 4
    assert not recommendation.scale_down_allowed
    assert "entering panic" in recommendation.reason


def test_below_threshold_stays_stable():
    recommendation, state = step(20.0, 30.0, BurstState(), now=0.0, current=2)
    assert not state.panicking
    assert recommendation.desired == 2


def test_no_scale_down_while_panicking():
    _, state = step(20.0, 80.0, BurstState(), now=0.0, current=2)
    recommendation, state = step(20.0, 10.0, state, now=10.0, current=8)
    assert state.panicking
    assert recommendation.desired == 8


def test_panic_ends_after_stable_window_below_threshold():
    _, state = step(20.0, 80.0, BurstState(), now=0.0, current=2)
    _, state = step(20.0, 10.0, state, now=59.0, current=8, ready=8)
    assert state.panicking
    recommendation, state = step(20.0, 10.0, state, now=60.0, current=8, ready=8)
    assert not state.panicking
    assert recommendation.desired == 4


def test_leaving_panic_holds_capacity_while_instances_start():
    _, state = step(20.0, 80.0, BurstState(), now=0.0, current=2)
    recommendation, state = step(20.0, 10.0, state, now=60.0, current=8, ready=2, pending=6)
    assert not state.panicking
    assert recommendation.desired == 8
    assert "holding 8" in recommendation.reason
    recommendation, state = step(20.0, 10.0, state, now=62.0, current=8, ready=8, pending=0)
    # Stable asks for 2, and the KPA scale-down rate of 2x allows 8 -> 4 per evaluation.
    assert recommendation.desired == 4
    assert state.exit_floor == 0


def test_scale_down_rate_limits_to_half_of_ready():
    recommendation, _ = step(10.0, 10.0, BurstState(), now=0.0, current=10, ready=10)
    assert recommendation.desired == 5


def test_no_data_is_invalid():
    recommendation, state = step(None, None, BurstState(), now=0.0, current=3)
    assert not recommendation.valid
    assert state == BurstState()


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"target": 0.0}, id="zero-target"),
        pytest.param({"target": math.inf}, id="infinite-target"),
        pytest.param({"target": 1.0, "panic_window_s": 120.0}, id="panic-longer-than-stable"),
        pytest.param({"target": 1.0, "panic_threshold": 1.0}, id="threshold-one"),
        pytest.param({"target": 1.0, "max_scale_down_rate": 1.0}, id="down-rate-one"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs):
    with pytest.raises(EngineConfigError):
        Burst("concurrency", **kwargs)

"""Tests for the predictive floor: trend and seasonal forecasts at now + time to ready."""

from __future__ import annotations

import math

import pytest

from warmstart.engine import EngineConfigError, Predictive
from warmstart.engine.policy.predictive import LoadHistory
from warmstart.testing import policy_inputs as inputs


def run(policy: Predictive, loads: list[tuple[float, float]], time_to_ready_s=None):
    state = policy.initial_state()
    recommendation = None
    for now, load in loads:
        observed = inputs({policy.query: load}, now=now, time_to_ready_s=time_to_ready_s)
        recommendation, state = policy.recommend(observed, state)
    return recommendation, state


def test_linear_ramp_forecast_at_time_to_ready():
    policy = Predictive("rps", target=10.0, step_s=10.0, trend_window_s=300.0)
    # Load grows by 1 per second: 0 at t=0 ... 290 at t=290.
    loads = [(float(t), float(t)) for t in range(0, 300, 10)]
    recommendation, _ = run(policy, loads, time_to_ready_s=100.0)
    assert recommendation.valid
    assert recommendation.floor_only
    # The fitted level at t=290 is about 285 (step midpoints); +100 s of trend gives about 385.
    assert 37 <= recommendation.desired <= 40


def test_not_enough_history_is_invalid():
    policy = Predictive("rps", target=10.0, step_s=10.0)
    recommendation, _ = run(policy, [(0.0, 5.0), (10.0, 5.0)])
    assert not recommendation.valid
    assert "history" in recommendation.reason


def test_seasonal_forecast_uses_change_one_season_ago():
    policy = Predictive(
        "rps", target=10.0, step_s=10.0, trend_window_s=60.0, season_s=600.0, max_horizon_s=100.0
    )
    # One season (600 s) before the forecast time t=890 the load was 200, against 10 one
    # season before now (t=790), so the forecast is the current level 10 plus 190.
    loads = [(float(t), 200.0 if 250 <= t < 400 else 10.0) for t in range(0, 800, 10)]
    recommendation, _ = run(policy, loads, time_to_ready_s=100.0)
    assert "seasonal" in recommendation.reason
    assert recommendation.desired == 20


def test_forecast_never_negative():
    policy = Predictive("rps", target=10.0, step_s=10.0, trend_window_s=100.0)
    loads = [(float(t), max(0.0, 100.0 - t)) for t in range(0, 100, 10)]
    recommendation, _ = run(policy, loads, time_to_ready_s=600.0)
    assert recommendation.desired == 0


def test_history_ring_forgets_old_steps():
    history = LoadHistory(step_s=10.0, size=4)
    history.record(0.0, 1.0)
    history.record(45.0, 2.0)
    assert history.at(0.0) is None
    assert history.at(45.0) == 2.0


def test_history_averages_within_step():
    history = LoadHistory(step_s=10.0, size=4)
    history.record(1.0, 2.0)
    history.record(2.0, 4.0)
    assert history.at(5.0) == pytest.approx(3.0)


def test_horizon_is_capped_and_defaults():
    policy = Predictive("rps", target=1.0, default_horizon_s=30.0, max_horizon_s=60.0)
    assert policy.horizon(None) == 30.0
    assert policy.horizon(600.0) == 60.0


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"target": 0.0}, id="zero-target"),
        pytest.param({"target": math.inf}, id="infinite-target"),
        pytest.param({"target": 1.0, "season_s": math.inf}, id="infinite-season"),
        pytest.param({"target": 1.0, "step_s": 0.0}, id="zero-step"),
        pytest.param({"target": 1.0, "season_s": -1.0}, id="negative-season"),
        pytest.param({"target": 1.0, "min_points": 1}, id="one-point"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs):
    with pytest.raises(EngineConfigError):
        Predictive("rps", **kwargs)

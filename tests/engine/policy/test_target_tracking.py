"""Tests for target tracking: the HPA rule on endpoint totals and per-instance means."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmstart.engine import Aggregation, EngineConfigError, Statistic, TargetTracking
from warmstart.testing import policy_inputs as inputs

POLICY = TargetTracking("concurrency", target=10.0, window_s=60.0)


def recommend(value, **kwargs):
    recommendation, _ = POLICY.recommend(inputs({POLICY.query: value}, **kwargs), None)
    return recommendation


@pytest.mark.parametrize(
    ("current", "total", "expected"),
    [
        pytest.param(3, 60.0, 6, id="double-load-doubles"),
        pytest.param(4, 20.0, 2, id="half-load-halves"),
        pytest.param(2, 21.0, 3, id="rounds-up"),
        pytest.param(5, 0.0, 0, id="no-load"),
        pytest.param(2, 30.000000000001, 3, id="float-error-not-rounded-up"),
    ],
)
def test_desired_is_ceil_of_total_over_target(current, total, expected):
    assert recommend(total, current=current).desired == expected


def test_hpa_utilization_example_doubles_replicas():
    # Kubernetes documents: current 200m against a 100m target doubles the replica count.
    policy = TargetTracking("cpu", target=0.1, window_s=15.0)
    observed = inputs({policy.query: 0.2}, current=3, aggregation=Aggregation.MEAN)
    recommendation, _ = policy.recommend(observed, None)
    assert recommendation.desired == 6
    assert recommendation.usage_ratio == pytest.approx(2.0)


def test_no_data_is_invalid_and_blocks_scale_down():
    recommendation = recommend(None)
    assert not recommendation.valid
    assert not recommendation.scale_down_allowed
    assert "no fresh" in recommendation.reason


def test_stale_series_block_scale_down_but_allow_scale_up():
    low = recommend(1.0, current=4, stale=1)
    high = recommend(100.0, current=4, stale=1)
    assert not low.scale_down_allowed
    assert high.desired == 10
    assert "stale" in high.reason


def test_zero_ready_scales_from_current_count_not_zero():
    recommendation = recommend(50.0, current=2, ready=0, pending=2)
    assert recommendation.desired == 5


def test_scale_from_zero_capacity_uses_total():
    recommendation = recommend(25.0, current=0, ready=0)
    assert recommendation.desired == 3
    assert recommendation.usage_ratio is None


def test_mean_metric_missing_instances_count_at_target_for_scale_down():
    policy = TargetTracking("kv", target=0.6, window_s=10.0)
    # 2 of 4 instances report 0.3; missing ones count as at target when scaling down.
    observed = inputs({policy.query: 0.3}, current=4, reporting=2, aggregation=Aggregation.MEAN)
    recommendation, _ = policy.recommend(observed, None)
    assert recommendation.desired == 3


def test_mean_metric_missing_instances_count_idle_for_scale_up():
    policy = TargetTracking("kv", target=0.5, window_s=10.0)
    observed = inputs({policy.query: 0.9}, current=4, reporting=2, aggregation=Aggregation.MEAN)
    recommendation, _ = policy.recommend(observed, None)
    # Load 1.8 over 4 instances is below target, so no scale-up; nor a scale-down.
    assert recommendation.desired == 4


@given(
    current=st.integers(0, 200),
    low=st.floats(0, 1e5, allow_nan=False),
    extra=st.floats(0, 1e5, allow_nan=False),
)
def test_desired_is_monotone_in_load(current, low, extra):
    assert (
        recommend(low, current=current).desired <= recommend(low + extra, current=current).desired
    )


@given(current=st.integers(1, 200), total=st.floats(0, 1e6, allow_nan=False))
def test_desired_serves_load_at_target(current, total):
    desired = recommend(total, current=current).desired
    assert desired * 10.0 >= total - 1e-6
    assert (desired - 1) * 10.0 < total + 1e-6 or desired == current


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"target": 0.0}, id="zero-target"),
        pytest.param({"target": -1.0}, id="negative-target"),
        pytest.param({"target": math.inf}, id="infinite-target"),
        pytest.param({"target": math.nan}, id="nan-target"),
        pytest.param({"target": 1.0, "window_s": 0.0}, id="zero-window"),
        pytest.param({"target": 1.0, "statistic": Statistic.EWMA}, id="ewma-without-half-life"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs):
    with pytest.raises(EngineConfigError):
        TargetTracking("m", **kwargs)


def test_default_name_names_the_metric():
    assert POLICY.name == "target_tracking(concurrency)"

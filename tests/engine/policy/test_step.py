"""Tests for step scaling, including the AWS rounding rules for percent changes."""

from __future__ import annotations

import pytest

from warmstart.engine import AdjustmentType, EngineConfigError, Step, StepScaling
from warmstart.engine.policy.step import percent_change
from warmstart.testing import policy_inputs as inputs

# Threshold 50: [50, 60) no change, [60, 70) +10 %, [70, inf) +30 %; below 40 remove 1.
PERCENT_STEPS = StepScaling(
    "cpu",
    (Step(50, 60, 0), Step(60, 70, 10), Step(70, None, 30)),
    AdjustmentType.PERCENT_CHANGE_IN_CAPACITY,
)


@pytest.mark.parametrize(
    ("capacity", "percent", "expected"),
    [
        pytest.param(10, 27, 2, id="above-one-rounds-down"),
        pytest.param(3, 20, 1, id="between-zero-and-one-becomes-one"),
        pytest.param(3, -20, -1, id="between-minus-one-and-zero-becomes-minus-one"),
        pytest.param(10, -67, -6, id="below-minus-one-rounds-toward-zero"),
        pytest.param(10, 0, 0, id="zero"),
    ],
)
def test_percent_change_rounding(capacity, percent, expected):
    assert percent_change(capacity, percent) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(55.0, 10, id="first-step-no-change"),
        pytest.param(65.0, 11, id="ten-percent-of-ten"),
        pytest.param(75.0, 13, id="thirty-percent-of-ten"),
        pytest.param(20.0, 10, id="no-step-matches"),
    ],
)
def test_percent_steps_on_ten_instances(value, expected):
    recommendation, _ = PERCENT_STEPS.recommend(
        inputs({PERCENT_STEPS.query: value}, current=10), None
    )
    assert recommendation.desired == expected


def test_min_adjustment_magnitude_example():
    # AWS documents: 25 % of 4 tasks is 1, but MinAdjustmentMagnitude 2 scales out by 2.
    policy = StepScaling(
        "cpu",
        (Step(0, None, 25),),
        AdjustmentType.PERCENT_CHANGE_IN_CAPACITY,
        min_adjustment_magnitude=2,
    )
    recommendation, _ = policy.recommend(inputs({policy.query: 80.0}, current=4), None)
    assert recommendation.desired == 6


def test_scale_out_counts_starting_instances():
    policy = StepScaling("q", (Step(10, None, 3),))
    observed = inputs({policy.query: 50.0}, current=13, ready=10, pending=3)
    recommendation, _ = policy.recommend(observed, None)
    assert recommendation.desired == 13


def test_scale_in_applies_to_current_capacity():
    policy = StepScaling("q", (Step(None, 5, -2),))
    recommendation, _ = policy.recommend(inputs({policy.query: 1.0}, current=6), None)
    assert recommendation.desired == 4


def test_exact_capacity_sets_count():
    policy = StepScaling("q", (Step(100, None, 20),), AdjustmentType.EXACT_CAPACITY)
    recommendation, _ = policy.recommend(inputs({policy.query: 150.0}, current=3), None)
    assert recommendation.desired == 20


def test_no_data_is_invalid():
    recommendation, _ = PERCENT_STEPS.recommend(inputs({PERCENT_STEPS.query: None}), None)
    assert not recommendation.valid


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param((), id="empty"),
        pytest.param((Step(0, 10, 1), Step(5, None, 2)), id="overlap"),
        pytest.param((Step(10, 5, 1),), id="upper-below-lower"),
        pytest.param((Step(None, 10, 1), Step(None, 20, 1)), id="two-unbounded-below"),
    ],
)
def test_invalid_steps_raise_config_error(steps):
    with pytest.raises(EngineConfigError):
        StepScaling("q", steps)

"""The reusable property checks, run against built-in configurations and broken policies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmstart.engine import (
    PRESETS,
    EndpointSpec,
    MetricSpec,
    Policy,
    PolicyInputs,
    Recommendation,
    TargetTracking,
    WindowQuery,
    preset,
)
from warmstart.testing import (
    PropertyViolation,
    check_monotone_in_load,
    check_no_scale_down_on_missing_data,
    check_settles_under_constant_load,
    check_within_bounds,
    constant_stream,
)
from warmstart.testing.strategies import metric_streams

from ..helpers import DIRECT


def tracking(min_capacity=1, max_capacity=20) -> EndpointSpec:
    return EndpointSpec(
        "llm",
        (MetricSpec("concurrency"),),
        (TargetTracking("concurrency", 10.0, window_s=10.0),),
        min_capacity=min_capacity,
        max_capacity=max_capacity,
        initial_capacity=max(min_capacity, 1),
    )


@given(stream=metric_streams(duration_s=60.0))
def test_tracking_stays_within_bounds(stream):
    check_within_bounds(tracking(), "concurrency", stream, until_s=1080.0)


@given(stream=metric_streams(duration_s=60.0), gap=st.floats(1010.0, 1050.0))
def test_tracking_never_scales_down_on_missing_data(stream, gap):
    check_no_scale_down_on_missing_data(tracking(), "concurrency", stream, gap, until_s=1090.0)


@given(low=st.floats(0, 500), high=st.floats(0, 500))
def test_tracking_is_monotone_in_load(low, high):
    check_monotone_in_load(tracking(max_capacity=100), "concurrency", low, high, duration_s=30.0)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("load", [0.0, 35.0, 470.0])
def test_presets_settle_under_constant_load(name, load):
    spec = preset(name, endpoint="llm", metric="concurrency", target=10.0, min_capacity=1)
    check_settles_under_constant_load(spec, "concurrency", load, duration_s=900.0)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_never_scale_down_on_missing_data(name):
    spec = preset(name, endpoint="llm", metric="concurrency", target=10.0, min_capacity=1)
    stream = constant_stream(5.0, 200.0)
    check_no_scale_down_on_missing_data(spec, "concurrency", stream, 1100.0, until_s=1700.0)


# -- the checks must be able to fail ------------------------------------------------------------


@dataclass(frozen=True)
class Flapping(Policy):
    """Alternates between two counts on every call."""

    name: str = "flapping"

    def queries(self) -> tuple[WindowQuery, ...]:
        return (WindowQuery("concurrency", window_s=10.0),)

    def initial_state(self) -> Any:
        return 0

    def recommend(self, inputs: PolicyInputs, state: Any) -> tuple[Recommendation, Any]:
        return Recommendation(self.name, 2 + state % 2 * 3, True, "flap"), state + 1


@dataclass(frozen=True)
class Inverted(Policy):
    """Asks for fewer instances as load grows."""

    name: str = "inverted"

    def queries(self) -> tuple[WindowQuery, ...]:
        return (WindowQuery("concurrency", window_s=10.0),)

    def recommend(self, inputs: PolicyInputs, state: Any) -> tuple[Recommendation, Any]:
        value = inputs.observe(self.queries()[0]).value or 0.0
        return Recommendation(self.name, max(0, 50 - int(value)), True, "inverted"), state


@dataclass(frozen=True)
class Careless(Policy):
    """Treats missing data as zero load and still claims the recommendation is valid."""

    name: str = "careless"

    def queries(self) -> tuple[WindowQuery, ...]:
        return (WindowQuery("concurrency", window_s=10.0),)

    def recommend(self, inputs: PolicyInputs, state: Any) -> tuple[Recommendation, Any]:
        value = inputs.observe(self.queries()[0]).value or 0.0
        return Recommendation(self.name, int(value // 10), True, "careless"), state


def custom(policy: Policy) -> EndpointSpec:
    return EndpointSpec(
        "llm", (MetricSpec("concurrency"),), (policy,), initial_capacity=10, behavior=DIRECT
    )


def test_oscillation_is_reported():
    with pytest.raises(PropertyViolation, match="still changes"):
        check_settles_under_constant_load(custom(Flapping()), "concurrency", 10.0, 60.0)


def test_non_monotone_policy_is_reported():
    with pytest.raises(PropertyViolation, match="got"):
        check_monotone_in_load(custom(Inverted()), "concurrency", 1.0, 40.0, duration_s=10.0)


def test_scale_down_on_missing_data_is_reported():
    stream = constant_stream(40.0, 20.0)
    with pytest.raises(PropertyViolation, match="after data stopped"):
        check_no_scale_down_on_missing_data(
            custom(Careless()), "concurrency", stream, 1010.0, until_s=1060.0
        )

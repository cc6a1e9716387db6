"""Tests for endpoint and metric spec validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from warmstart.engine import EndpointSpec, EngineConfigError, MetricSpec, TargetTracking

METRICS = (MetricSpec("m"),)
POLICIES = (TargetTracking("m", 1.0, window_s=30.0),)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"name": ""}, id="empty-name"),
        pytest.param({"min_capacity": 5, "max_capacity": 2}, id="min-above-max"),
        pytest.param({"min_capacity": -1}, id="negative-min"),
        pytest.param({"interval_s": 0.0}, id="zero-interval"),
        pytest.param({"bucket_s": -1.0}, id="negative-bucket"),
        pytest.param({"initial_capacity": 500}, id="initial-above-max"),
        pytest.param({"policies": ()}, id="no-policy"),
        pytest.param({"metrics": (MetricSpec("m"), MetricSpec("m"))}, id="duplicate-metric"),
        pytest.param({"policies": POLICIES * 2}, id="duplicate-policy"),
        pytest.param({"time_to_ready_s": -5.0}, id="negative-time-to-ready"),
        pytest.param({"time_to_ready_s": math.inf}, id="infinite-time-to-ready"),
        pytest.param({"max_capacity": 2.5}, id="fractional-max"),
        pytest.param({"min_capacity": 1.0}, id="float-min"),
        pytest.param({"max_capacity": True}, id="boolean-max"),
        pytest.param({"initial_capacity": 1.5}, id="fractional-initial"),
    ],
)
def test_invalid_endpoint_spec_raises(kwargs):
    arguments = {"name": "e", "metrics": METRICS, "policies": POLICIES, **kwargs}
    with pytest.raises(EngineConfigError):
        EndpointSpec(**arguments)


def test_invalid_metric_spec_raises():
    with pytest.raises(EngineConfigError, match="stale_after_s"):
        MetricSpec("m", stale_after_s=0.0)


def test_numpy_integer_capacity_becomes_int():
    spec = EndpointSpec("e", METRICS, POLICIES, max_capacity=np.int64(7))
    assert type(spec.max_capacity) is int
    assert spec.max_capacity == 7


def test_longest_window_and_start_capacity():
    spec = EndpointSpec("e", METRICS, POLICIES, min_capacity=2)
    assert spec.longest_window_s == 30.0
    assert spec.start_capacity == 2
    assert spec.metric("m").name == "m"

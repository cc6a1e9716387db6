"""Helpers for testing scaling configurations: a fake clock, replay, streams and properties.

``warmstart.testing.strategies`` needs ``hypothesis``; the rest needs only numpy.
"""

from warmstart.engine.clock import FakeClock
from warmstart.testing.inputs import policy_inputs
from warmstart.testing.properties import (
    PropertyViolation,
    check_monotone_in_load,
    check_no_scale_down_on_missing_data,
    check_settles_under_constant_load,
    check_within_bounds,
    constant_stream,
    without_stabilization,
)
from warmstart.testing.replay import Delivery, MetricStream, replay, replay_spec, settle

__all__ = [
    "Delivery",
    "FakeClock",
    "MetricStream",
    "PropertyViolation",
    "check_monotone_in_load",
    "check_no_scale_down_on_missing_data",
    "check_settles_under_constant_load",
    "check_within_bounds",
    "constant_stream",
    "policy_inputs",
    "replay",
    "replay_spec",
    "settle",
    "without_stabilization",
]

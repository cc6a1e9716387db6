"""Hypothesis strategies for behavior settings and recommendations, shared by engine tests."""

from __future__ import annotations

from hypothesis import strategies as st

from warmstart.engine import (
    Behavior,
    RateKind,
    RatePolicy,
    Recommendation,
    ScalingRules,
    SelectPolicy,
)

rate_policies = st.builds(
    RatePolicy,
    kind=st.sampled_from(RateKind),
    value=st.sampled_from([1.0, 2.0, 4.0, 10.0, 50.0, 100.0, 300.0]),
    period_s=st.sampled_from([1.0, 3.0, 5.0, 15.0, 60.0]),
)
scaling_rules = st.builds(
    ScalingRules,
    stabilization_window_s=st.sampled_from([0.0, 1.0, 3.0, 30.0, 300.0]),
    policies=st.lists(rate_policies, max_size=3).map(tuple),
    select=st.sampled_from(SelectPolicy),
    cooldown_s=st.sampled_from([0.0, 1.0, 2.0, 3.0, 20.0]),
)
behaviors = st.builds(
    Behavior,
    scale_up=scaling_rules,
    scale_down=scaling_rules,
    tolerance=st.sampled_from([0.0, 0.1, 0.5]),
    restart_hold_s=st.none(),
    scale_to_zero_after_s=st.sampled_from([0.0, 5.0, 30.0]),
)
recommendations = st.builds(
    Recommendation,
    policy=st.sampled_from(["a", "b", "c"]),
    desired=st.integers(0, 40),
    valid=st.booleans(),
    reason=st.just("test"),
    scale_down_allowed=st.booleans(),
    floor_only=st.booleans(),
    # Ratios at the edges of the tolerance bands, as well as arbitrary ones.
    usage_ratio=st.none() | st.sampled_from([0.5, 0.9, 1.0, 1.1, 1.5]) | st.floats(0.0, 3.0),
)

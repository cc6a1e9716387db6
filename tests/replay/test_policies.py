"""Policy specs for replay: every name builds, and coarse metrics stay fresh."""

from __future__ import annotations

import pytest

from warmstart.replay import POLICIES, policy_spec
from warmstart.replay.fleet import METRIC


@pytest.mark.parametrize("name", POLICIES)
def test_policy_starts_at_initial_capacity(name: str) -> None:
    spec = policy_spec(name, target=8.0, time_to_ready_s=300.0, initial_capacity=3)

    assert spec.start_capacity == 3
    assert spec.metric(METRIC).name == METRIC
    assert spec.time_to_ready_s == 300.0


@pytest.mark.parametrize("name", POLICIES)
def test_coarse_metric_stays_fresh_between_reports(name: str) -> None:
    spec = policy_spec(
        name, target=8.0, time_to_ready_s=300.0, initial_capacity=1, metric_period_s=60.0
    )

    assert spec.metric(METRIC).stale_after_s >= 121.0


def test_unknown_policy_lists_choices() -> None:
    with pytest.raises(ValueError, match="hpa"):
        policy_spec("fastest", target=1.0, time_to_ready_s=1.0, initial_capacity=1)

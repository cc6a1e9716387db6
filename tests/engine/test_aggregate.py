"""Tests for window queries, observations and the per-group reduction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmstart.engine import Aggregation, Observation, Statistic, WindowQuery
from warmstart.engine.aggregate import group_reduce


def test_mean_observation_total_multiplies_by_reporting():
    assert Observation(0.5, 4, 0, Aggregation.MEAN).total == 2.0
    assert Observation(3.0, 4, 0, Aggregation.SUM).total == 3.0
    assert Observation(None, 0, 0).total is None


def test_complete_requires_value_and_no_stale():
    assert Observation(1.0, 1, 0).complete
    assert not Observation(1.0, 1, 1).complete
    assert not Observation(None, 0, 0).complete


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"window_s": 0.0}, id="zero-window"),
        pytest.param({"statistic": Statistic.EWMA}, id="ewma-no-half-life"),
        pytest.param({"half_life_s": 5.0}, id="half-life-without-ewma"),
    ],
)
def test_invalid_query_raises(kwargs):
    with pytest.raises(ValueError, match=r"window_s|half_life_s"):
        WindowQuery("m", **kwargs)


def test_describe_names_statistic_metric_and_window():
    query = WindowQuery("kv", Statistic.EWMA, 30.0, 5.0)
    assert query.describe() == "ewma(kv, 30s, half-life 5s)"


@given(
    data=st.lists(
        st.tuples(st.integers(0, 4), st.floats(-1e6, 1e6, allow_nan=False), st.booleans()),
        max_size=50,
    )
)
def test_group_reduce_matches_loop(data):
    groups = np.array([g for g, _, _ in data], dtype=np.int32)
    values = np.array([v for _, v, _ in data], dtype=float)
    use = np.array([u for _, _, u in data], dtype=bool)
    sums, counts = group_reduce(groups, values, use, 5)
    for group in range(5):
        chosen = [v for g, v, u in data if g == group and u]
        assert sums[group] == pytest.approx(sum(chosen), abs=1e-6)
        assert counts[group] == len(chosen)

"""The stream strategies produce what they promise."""

from __future__ import annotations

import math

from hypothesis import given

from warmstart.testing import constant_stream
from warmstart.testing.strategies import (
    bursts,
    metric_streams,
    out_of_order,
    ramps,
    skewed,
    steady,
    with_duplicates,
    with_gaps,
    with_nan_bursts,
)

BASE = constant_stream(10.0, 30.0)


@given(stream=steady(duration_s=10.0, instances=2))
def test_steady_has_one_value(stream):
    assert len(stream) == 20
    assert len({d.value for d in stream}) == 1


@given(stream=ramps(duration_s=10.0, instances=1))
def test_ramp_is_monotone(stream):
    values = [d.value for d in stream]
    assert values == sorted(values) or values == sorted(values, reverse=True)


@given(stream=bursts(duration_s=20.0, instances=1))
def test_burst_has_at_most_two_levels(stream):
    assert len({d.value for d in stream}) <= 2


@given(stream=with_gaps(BASE))
def test_gaps_only_remove(stream):
    assert set(stream) <= set(BASE)


@given(stream=with_duplicates(BASE))
def test_duplicates_repeat_timestamps(stream):
    assert len(stream) >= len(BASE)
    assert {(d.instance, d.timestamp_s) for d in stream} == {
        (d.instance, d.timestamp_s) for d in BASE
    }


@given(stream=out_of_order(BASE))
def test_out_of_order_keeps_samples_sorted_by_arrival(stream):
    arrivals = [d.received_s for d in stream]
    assert arrivals == sorted(arrivals)
    assert sorted(d.timestamp_s for d in stream) == sorted(d.timestamp_s for d in BASE)


@given(stream=skewed(BASE, max_skew_s=120.0))
def test_skew_is_constant_per_instance(stream):
    offsets = {}
    for delivery in stream:
        offset = delivery.timestamp_s - delivery.received_s
        assert abs(offset) <= 120.0
        assert math.isclose(offsets.setdefault(delivery.instance, offset), offset, abs_tol=1e-6)


@given(stream=with_nan_bursts(BASE))
def test_nan_burst_damages_a_run(stream):
    bad = [i for i, d in enumerate(stream) if not math.isfinite(d.value)]
    assert bad
    assert bad == list(range(bad[0], bad[-1] + 1))


@given(stream=metric_streams(duration_s=20.0))
def test_metric_streams_are_sorted_by_arrival(stream):
    arrivals = [d.received_s for d in stream]
    assert arrivals == sorted(arrivals)

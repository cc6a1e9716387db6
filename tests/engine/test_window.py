"""Tests for the bucket ring buffers: every statistic equals a naive recomputation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmstart.engine.window import BYTES_PER_BUCKET, BucketTable, Statistic


def naive(
    samples: list[tuple[int, float]],
    newest: int,
    n: int,
    statistic: Statistic,
    bucket_s: float = 1.0,
    half_life_s: float = 5.0,
) -> float:
    inside = [(b, v) for b, v in samples if newest - n < b <= newest]
    if not inside:
        return math.nan
    values = [v for _, v in inside]
    if statistic is Statistic.MEAN:
        return sum(values) / len(values)
    if statistic is Statistic.MAX:
        return max(values)
    if statistic is Statistic.SUM:
        return sum(values)
    if statistic is Statistic.RATE:
        return sum(values) / (n * bucket_s)
    buckets: dict[int, list[float]] = {}
    for b, v in inside:
        buckets.setdefault(b, []).append(v)
    weights = {b: 2 ** (-(newest - b) * bucket_s / half_life_s) for b in buckets}
    total = sum(weights.values())
    return sum(weights[b] * sum(vs) / len(vs) for b, vs in buckets.items()) / total


samples_strategy = st.lists(
    st.tuples(st.integers(0, 40), st.floats(0, 1e6, allow_nan=False)), max_size=80
)


@given(
    samples=samples_strategy,
    newest=st.integers(0, 45),
    n=st.integers(1, 16),
    statistic=st.sampled_from(list(Statistic)),
)
def test_statistic_matches_naive_recomputation(samples, newest, n, statistic):
    table = BucketTable(1.0, 16)
    row = table.add_row()
    # Feed in time order, as the store guarantees: each call stays within the ring.
    for bucket, value in sorted(samples):
        table.accumulate(np.array([row]), np.array([bucket]), np.array([value]))
    newest_written = max((b for b, _ in samples), default=-1)
    newest = max(newest, newest_written)
    recent = [(b, v) for b, v in samples if b > newest_written - 16]
    half_life = 5.0 if statistic is Statistic.EWMA else None
    got = table.statistic(statistic, newest, n, half_life)[row]
    expected = naive(recent, newest, n, statistic)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-6)


@given(
    samples=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 15), st.floats(0, 100, allow_nan=False)),
        max_size=60,
    )
)
def test_batch_accumulate_matches_one_at_a_time(samples):
    batch = BucketTable(1.0, 16)
    single = BucketTable(1.0, 16)
    for _ in range(4):
        batch.add_row()
        single.add_row()
    if samples:
        rows, buckets, values = (np.array(c) for c in zip(*samples, strict=True))
        batch.accumulate(rows.astype(np.int64), buckets.astype(np.int64), values.astype(float))
    for row, bucket, value in samples:
        single.accumulate(np.array([row]), np.array([bucket]), np.array([value]))
    for statistic in (Statistic.SUM, Statistic.MAX, Statistic.MEAN):
        np.testing.assert_allclose(
            batch.statistic(statistic, 15, 16), single.statistic(statistic, 15, 16)
        )


def test_expired_bucket_is_reset_before_reuse():
    table = BucketTable(1.0, 4)
    row = table.add_row()
    table.accumulate(np.array([row]), np.array([10]), np.array([3.0]))
    table.accumulate(np.array([row]), np.array([10]), np.array([5.0]))
    table.accumulate(np.array([row]), np.array([14]), np.array([7.0]))
    assert table.statistic(Statistic.SUM, 14, 4)[row] == 7.0
    assert table.statistic(Statistic.MAX, 14, 4)[row] == 7.0


def test_gap_reads_as_no_samples():
    table = BucketTable(1.0, 8)
    row = table.add_row()
    table.accumulate(np.array([row]), np.array([1]), np.array([4.0]))
    assert math.isnan(table.statistic(Statistic.MEAN, 7, 3)[row])
    assert table.statistic(Statistic.MEAN, 3, 3)[row] == 4.0


def test_rate_divides_by_window_seconds():
    table = BucketTable(2.0, 8)
    row = table.add_row()
    table.accumulate(np.array([row, row]), np.array([4, 5]), np.array([10.0, 30.0]))
    assert table.statistic(Statistic.RATE, 5, 4)[row] == pytest.approx(40.0 / 8.0)


def test_ewma_weights_newer_buckets_more():
    table = BucketTable(1.0, 16)
    row = table.add_row()
    table.accumulate(np.array([row, row]), np.array([0, 10]), np.array([0.0, 10.0]))
    value = table.statistic(Statistic.EWMA, 10, 11, half_life_s=10.0)[row]
    assert value == pytest.approx(10.0 * 1.0 / (1.0 + 0.5))


def test_ewma_requires_half_life():
    table = BucketTable(1.0, 4)
    table.add_row()
    with pytest.raises(ValueError, match="half_life_s"):
        table.statistic(Statistic.EWMA, 3, 4)


def test_rows_grow_and_keep_data():
    table = BucketTable(1.0, 4, initial_rows=1)
    first = table.add_row()
    table.accumulate(np.array([first]), np.array([2]), np.array([9.0]))
    for _ in range(10):
        table.add_row()
    assert table.capacity >= 11
    assert table.statistic(Statistic.SUM, 3, 4)[first] == 9.0


def test_memory_per_row_is_stated_bytes():
    table = BucketTable(1.0, 64, initial_rows=100)
    assert table.nbytes == 100 * 64 * BYTES_PER_BUCKET


@pytest.mark.parametrize(("bucket_s", "n_buckets"), [(0.0, 4), (-1.0, 4), (math.nan, 4), (1.0, 1)])
def test_invalid_dimensions_are_rejected(bucket_s, n_buckets):
    with pytest.raises(ValueError, match=r"bucket_s|n_buckets"):
        BucketTable(bucket_s, n_buckets)


def test_keep_rows_keeps_order_and_empties_tail():
    table = BucketTable(1.0, 4)
    for _ in range(3):
        table.add_row()
    table.accumulate(np.array([0, 1, 2]), np.array([10, 10, 10]), np.array([1.0, 2.0, 3.0]))

    table.keep_rows(np.array([True, False, True]))
    row = table.add_row()

    assert table.rows == 3
    assert row == 2
    np.testing.assert_array_equal(table.statistic(Statistic.SUM, 10, 1), [1.0, 3.0, np.nan])

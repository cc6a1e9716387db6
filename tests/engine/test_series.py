"""Tests for sample validation, clock skew correction and vectorized ingestion."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmstart.engine.samples import MAX_ABS_VALUE, REASON_CODES, RejectReason
from warmstart.engine.series import IngestConfig, SeriesStore
from warmstart.engine.window import Statistic

NOW = 1000.0


def store_with(
    series: int = 2, config: IngestConfig | None = None, nonnegative: bool = True
) -> SeriesStore:
    store = SeriesStore(config or IngestConfig(), n_endpoints=1)
    table = store.table_for(1.0, 64)
    for index in range(series):
        add_instance_series(store, f"i{index}", table, nonnegative=nonnegative)
    return store


def add_instance_series(
    store: SeriesStore, instance: str, table: int, nonnegative: bool = True
) -> int:
    """Add the series of metric ``m`` of ``instance`` on endpoint ``e``; return its id."""
    return store.add_series(
        ("e", "m", instance),
        table_id=table,
        group=0,
        endpoint=0,
        nonnegative=nonnegative,
        stale_after_s=10.0,
        ready=False,
        created_s=NOW,
    )


def reasons(codes: np.ndarray) -> list[RejectReason | None]:
    return [None if c < 0 else REASON_CODES[c] for c in codes]


def ingest(store: SeriesStore, sids, timestamps, values, receive=NOW, now=NOW):
    return store.ingest(
        np.asarray(sids, dtype=np.int64),
        np.asarray(timestamps, dtype=float),
        np.asarray(values, dtype=float),
        receive,
        now,
    )


def window_sum(store: SeriesStore, now: float = NOW, window_s: float = 60.0) -> np.ndarray:
    return store.window(0, Statistic.SUM, window_s, None, now)


@pytest.mark.parametrize(
    ("timestamp", "value", "expected"),
    [
        pytest.param(NOW, math.nan, RejectReason.NAN_VALUE, id="nan"),
        pytest.param(NOW, math.inf, RejectReason.INFINITE_VALUE, id="inf"),
        pytest.param(NOW, -math.inf, RejectReason.INFINITE_VALUE, id="minus-inf"),
        pytest.param(NOW, -1.0, RejectReason.NEGATIVE_COUNT, id="negative-count"),
        pytest.param(NOW, 1e300, RejectReason.VALUE_OUT_OF_RANGE, id="huge"),
        pytest.param(math.nan, 1.0, RejectReason.INVALID_TIMESTAMP, id="nan-timestamp"),
        pytest.param(math.inf, 1.0, RejectReason.INVALID_TIMESTAMP, id="inf-timestamp"),
        pytest.param(NOW + 901.0, 1.0, RejectReason.TOO_FAR_IN_FUTURE, id="future"),
        pytest.param(NOW - 901.0, 1.0, RejectReason.TOO_OLD, id="old"),
        pytest.param(NOW, 0.0, None, id="zero-accepted"),
    ],
)
def test_bad_samples_are_rejected_with_reason(timestamp, value, expected):
    store = store_with()
    codes = ingest(store, [0], [timestamp], [value])
    assert reasons(codes) == [expected]


def test_unknown_series_id_is_rejected():
    store = store_with()
    assert reasons(ingest(store, [7, -1], [NOW, NOW], [1.0, 1.0])) == [
        RejectReason.UNKNOWN_SERIES,
        RejectReason.UNKNOWN_SERIES,
    ]


def test_negative_gauge_is_accepted():
    store = store_with(nonnegative=False)
    assert reasons(ingest(store, [0], [NOW], [-3.0])) == [None]


def test_bad_sample_keeps_good_samples_of_its_batch():
    store = store_with()
    codes = ingest(store, [0, 0, 1, 1], [NOW, NOW, NOW, NOW], [5.0, math.nan, -2.0, 7.0])
    assert reasons(codes) == [None, RejectReason.NAN_VALUE, RejectReason.NEGATIVE_COUNT, None]
    assert window_sum(store).tolist() == [5.0, 7.0]


@given(
    values=st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(-1.0)),
        min_size=1,
        max_size=50,
    )
)
def test_accepted_samples_are_finite_nonnegative_in_range(values):
    store = store_with(series=1)
    codes = ingest(store, [0] * len(values), [NOW] * len(values), values)
    good = [v for v in values if math.isfinite(v) and 0 <= v <= MAX_ABS_VALUE]
    assert int((codes < 0).sum()) == len(good)
    if good:
        assert window_sum(store)[0] == pytest.approx(sum(good))
    else:
        assert math.isnan(window_sum(store)[0])


@pytest.mark.parametrize("skew_s", [-90.0, -60.0, 0.0, 60.0, 90.0])
def test_skewed_producer_fills_current_window(skew_s):
    store = store_with(series=1)
    for second in range(10):
        now = NOW + second
        codes = ingest(store, [0], [now + skew_s], [1.0], receive=now, now=now)
        assert reasons(codes) == [None]
    assert window_sum(store, now=NOW + 9, window_s=10.0)[0] == 10.0
    assert store.last_ts[0] == pytest.approx(NOW + 9)


def test_skew_is_not_corrected_when_disabled():
    store = store_with(series=1, config=IngestConfig(skew_correction=False))
    assert reasons(ingest(store, [0], [NOW + 90.0], [1.0])) == [RejectReason.TOO_FAR_IN_FUTURE]
    assert reasons(ingest(store, [0], [NOW - 90.0], [1.0])) == [RejectReason.TOO_OLD]
    assert reasons(ingest(store, [0], [NOW - 30.0], [1.0])) == [None]
    assert window_sum(store, window_s=60.0)[0] == 1.0
    assert math.isnan(window_sum(store, window_s=10.0)[0])


def test_delayed_batch_lands_at_its_event_times():
    store = store_with(series=1)
    # The producer's clock is 100 s behind; this sets the series' lead to -100 s.
    ingest(store, [0], [NOW - 100.0], [1.0], receive=NOW, now=NOW)
    later = NOW + 10.0
    timestamps = [NOW - 95.0, NOW - 93.0, NOW - 91.0]
    ingest(store, [0, 0, 0], timestamps, [1.0, 2.0, 3.0], receive=later, now=later)
    table = store.tables[0]
    assert table.statistic(Statistic.SUM, table.bucket_of(NOW + 9), 1)[0] == 3.0
    assert table.statistic(Statistic.SUM, table.bucket_of(NOW + 7), 1)[0] == 2.0
    assert table.statistic(Statistic.SUM, table.bucket_of(NOW + 5), 1)[0] == 1.0
    assert math.isnan(table.statistic(Statistic.SUM, table.bucket_of(later), 1)[0])


def test_clock_step_back_resyncs_after_threshold():
    store = store_with(series=1)
    ingest(store, [0], [NOW], [1.0], receive=NOW, now=NOW)
    later = NOW + 1.0
    ingest(store, [0], [later - 120.0], [5.0], receive=later, now=later)
    assert store.lead[0] == pytest.approx(-120.0)
    assert store.last_ts[0] == pytest.approx(later)


def test_sample_older_than_ring_is_rejected_as_too_old():
    store = store_with(series=1, config=IngestConfig(skew_correction=False))
    codes = ingest(store, [0, 0], [NOW - 70.0, NOW - 10.0], [1.0, 1.0])
    assert reasons(codes) == [RejectReason.TOO_OLD, None]


def test_out_of_order_samples_land_in_their_buckets():
    store = store_with(series=1, config=IngestConfig(skew_correction=False))
    ingest(store, [0], [NOW], [1.0])
    ingest(store, [0], [NOW - 5.0], [4.0])
    assert window_sum(store, window_s=3.0)[0] == 1.0
    assert window_sum(store, window_s=10.0)[0] == 5.0


def test_positive_sample_marks_endpoint_active_and_wakes_watch():
    store = store_with(series=1)
    store.watch[0] = True
    ingest(store, [0], [NOW], [0.0])
    assert not store.woken
    ingest(store, [0], [NOW], [2.0])
    assert store.woken
    assert store.last_active[0] == pytest.approx(NOW)


def test_series_arrays_grow_past_initial_capacity():
    store = store_with(series=200)
    codes = ingest(store, np.arange(200), np.full(200, NOW), np.ones(200))
    assert (codes < 0).all()
    assert np.nansum(window_sum(store)) == 200.0


@pytest.mark.parametrize("name", ["max_skew_s", "resync_after_s", "max_future_s"])
def test_ingest_config_rejects_negative_durations(name):
    with pytest.raises(ValueError, match=name):
        IngestConfig(**{name: -1.0})


def gone(store: SeriesStore, *slots: int) -> None:
    for slot in slots:
        store.active[slot] = False


def test_collect_drops_gone_series_after_ring():
    store = store_with(series=3)
    ingest(store, [0, 1, 2], [NOW] * 3, [1.0, 2.0, 3.0])
    gone(store, 1)

    assert store.collect(NOW + 63.0) == 0
    assert store.collect(NOW + 64.0) == 1
    assert store.stored == 2
    assert store.tables[0].rows == 2
    assert ("e", "m", "i1") not in store.keys
    # The kept rows keep their order and their buckets.
    assert window_sum(store, NOW, 1.0).tolist() == [1.0, 3.0]
    assert store.row[[0, 2]].tolist() == [0, 1]


def test_collect_keeps_active_series():
    store = store_with(series=2)
    ingest(store, [0, 1], [NOW, NOW], [1.0, 1.0])

    assert store.collect(NOW + 1e6) == 0
    assert store.stored == 2


def test_dropped_series_id_is_rejected_after_slot_reuse():
    store = store_with(series=2)
    gone(store, 0)
    store.collect(NOW)
    new_id = add_instance_series(store, "new", table=0)

    codes = ingest(store, [0, new_id], [NOW, NOW], [5.0, 7.0])

    assert store.slot_of(new_id) == 0
    assert new_id != 0
    assert reasons(codes) == [RejectReason.UNKNOWN_SERIES, None]
    np.testing.assert_array_equal(window_sum(store, NOW, 1.0), [np.nan, 7.0])
    assert store.last_ts[0] == NOW


def test_forget_endpoint_frees_rows():
    store = store_with(series=3)

    store.forget_endpoint(0)

    assert store.stored == 0
    assert store.tables[0].rows == 0
    assert store.keys == {}
    assert store.instance_series == {}

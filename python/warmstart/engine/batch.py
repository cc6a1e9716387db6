"""The numpy side of one evaluation pass: window results and target tracking for many endpoints.

``observe`` computes each window query once across all series and reduces it per (endpoint,
metric) group. ``track`` then runs the arithmetic of ``TargetTracking`` for a group of
endpoints whose policies are all target tracking in one set of array operations, so the engine
builds only the ``Recommendation`` objects in Python.

``track`` repeats ``TargetTracking.recommend_observed`` operation by operation on float64, so
every desired capacity, load and usage ratio equals the per-endpoint result to the last bit.
Rows whose numbers leave the range where float64 represents integers exactly (a desired capacity
of 2**53 or more, inf or NaN) are marked inexact, and the engine computes those endpoints with
``recommend_observed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from warmstart.engine.aggregate import Aggregation, group_reduce
from warmstart.engine.policy._util import EPSILON
from warmstart.engine.policy.base import Capacity
from warmstart.engine.series import SeriesStore
from warmstart.engine.window import Statistic

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# (table id, statistic, window in seconds, EWMA half-life in seconds)
QueryKey = tuple[int, Statistic, float, float | None]

# Integers up to this magnitude convert between int and float64 exactly.
_EXACT_LIMIT = 2.0**53


class WindowResults:
    """Per-group results of the window queries of one pass.

    Row ``position[query_id]`` (-1 for a query not computed) of ``sums`` and ``counts``
    holds, per (endpoint, metric) group, the sum of the query's values over fresh series and
    how many fresh series had a value. ``stale`` counts per group the stale series: series of
    instances that are not gone, that reported at least once, and whose newest sample is older
    than the metric's ``stale_after_s``. ``fresh_ready`` counts the fresh series of ready
    instances.
    The ``*_lists`` methods return the same numbers as Python lists for the per-endpoint path,
    converted once per pass.
    """

    def __init__(
        self,
        position: IntArray,
        sums: FloatArray,
        counts: IntArray,
        stale: IntArray,
        fresh_ready: IntArray,
    ) -> None:
        self.position = position
        self.sums = sums
        self.counts = counts
        self.stale = stale
        self.fresh_ready = fresh_ready
        self._query_lists: dict[int, tuple[list[float], list[int]]] = {}
        self._freshness_lists: tuple[list[int], list[int]] | None = None

    def query_lists(self, query_id: int) -> tuple[list[float], list[int]]:
        """Return the per-group sums and reporting counts of one query as lists."""
        found = self._query_lists.get(query_id)
        if found is None:
            row = int(self.position[query_id])
            found = self._query_lists[query_id] = (
                self.sums[row].tolist(),
                self.counts[row].tolist(),
            )
        return found

    def freshness_lists(self) -> tuple[list[int], list[int]]:
        """Return ``stale`` and ``fresh_ready`` as lists."""
        if self._freshness_lists is None:
            self._freshness_lists = (self.stale.tolist(), self.fresh_ready.tolist())
        return self._freshness_lists


def observe(
    store: SeriesStore,
    query_keys: Sequence[QueryKey],
    query_ids: Iterable[int],
    n_groups: int,
    now: float,
) -> WindowResults:
    """Compute the window queries ``query_ids`` (indexes into ``query_keys``) at ``now``."""
    by_table: dict[int, list[int]] = {}
    for query_id in sorted(query_ids):
        by_table.setdefault(query_keys[query_id][0], []).append(query_id)
    position = np.full(len(query_keys), -1, dtype=np.int64)
    sums_rows: list[FloatArray] = []
    counts_rows: list[IntArray] = []
    stale = np.zeros(n_groups, dtype=np.int64)
    fresh_ready = np.zeros(n_groups, dtype=np.int64)
    for table_id, table_query_ids in by_table.items():
        sids = store.table_series(table_id)
        groups = store.group[sids]
        fresh = (now - store.last_ts[sids] <= store.stale_after_s[sids]) & store.active[sids]
        seen = np.isfinite(store.last_ts[sids]) & store.active[sids]
        # Each group belongs to one table, so adding the per-table counts never mixes tables.
        stale += np.bincount(groups, weights=seen & ~fresh, minlength=n_groups).astype(np.int64)
        fresh_ready += np.bincount(
            groups, weights=fresh & store.ready[sids], minlength=n_groups
        ).astype(np.int64)
        for query_id in table_query_ids:
            _, statistic, window_s, half_life_s = query_keys[query_id]
            values = store.window(table_id, statistic, window_s, half_life_s, now)
            use = fresh & ~np.isnan(values)
            sums, counts = group_reduce(groups, np.nan_to_num(values), use, n_groups)
            position[query_id] = len(sums_rows)
            sums_rows.append(sums)
            counts_rows.append(counts)
    return WindowResults(
        position,
        np.array(sums_rows, dtype=np.float64).reshape(len(sums_rows), n_groups),
        np.array(counts_rows, dtype=np.int64).reshape(len(counts_rows), n_groups),
        stale,
        fresh_ready,
    )


class TrackingRows:
    """Constants of every (endpoint, target-tracking policy) pair, one row each.

    Rows are only appended; a removed endpoint leaves its rows unused.
    """

    def __init__(self) -> None:
        self._columns: tuple[list[int], list[int], list[float], list[bool], list[bool]] = (
            [],
            [],
            [],
            [],
            [],
        )
        self._arrays: (
            tuple[IntArray, IntArray, FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]
            | None
        ) = None

    def add(
        self, query_id: int, group: int, target: float, aggregation: Aggregation, per_instance: bool
    ) -> int:
        """Append a row and return its index.

        ``group`` is the (endpoint, metric) group the query reads, ``target`` the policy's
        target per instance, ``per_instance`` the metric's flag of the same name.
        """
        query_ids, groups, targets, means, per_instances = self._columns
        query_ids.append(query_id)
        groups.append(group)
        targets.append(target)
        means.append(aggregation is Aggregation.MEAN)
        per_instances.append(per_instance)
        self._arrays = None
        return len(query_ids) - 1

    def arrays(
        self,
    ) -> tuple[IntArray, IntArray, FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Return the columns as arrays: query id, group, target, MEAN flag, per-instance flag."""
        if self._arrays is None:
            query_ids, groups, targets, means, per_instances = self._columns
            self._arrays = (
                np.array(query_ids, dtype=np.int64),
                np.array(groups, dtype=np.int64),
                np.array(targets, dtype=np.float64),
                np.array(means, dtype=np.bool_),
                np.array(per_instances, dtype=np.bool_),
            )
        return self._arrays


@dataclass(slots=True)
class Tracked:
    """Target tracking results of one group of endpoints, one entry per (endpoint, policy).

    The arrays feed ``behavior_rows.run_rows``; the lists hold the numbers of each
    recommendation's reason. ``value`` is NaN without data and ``ratio`` NaN at zero capacity.
    Where ``exact`` is False the results are not exact, and the engine computes that endpoint
    with ``TargetTracking.recommend_observed``.
    """

    valid: npt.NDArray[np.bool_]
    desired: FloatArray
    ratio: FloatArray
    scale_down_allowed: npt.NDArray[np.bool_]
    exact: npt.NDArray[np.bool_]
    reporting: list[int]
    stale: list[int]
    value: list[float]
    load: list[float]
    desired_list: list[int]
    ratio_list: list[float]


def track(
    rows: TrackingRows,
    row_ids: IntArray,
    row_endpoint: IntArray,
    capacities: Sequence[Capacity],
    tracked: Sequence[bool],
    silent_ready: Sequence[int],
    results: WindowResults,
) -> Tracked:
    """Run target tracking for the rows ``row_ids`` of a group of endpoints.

    ``row_endpoint`` gives for each row the position of its endpoint in ``capacities``,
    ``tracked`` (whether the engine has seen an instance event for it) and ``silent_ready``
    (its ready instances that timed out, ``InstanceTracker.silent_ready``).
    """
    all_query_ids, all_groups, all_targets, all_means, all_per_instance = rows.arrays()
    query_ids = all_query_ids[row_ids]
    groups = all_groups[row_ids]
    target = all_targets[row_ids]
    mean = all_means[row_ids]
    per_instance = all_per_instance[row_ids]

    # Float, so a capacity beyond the int64 range still converts; it is then marked inexact.
    current = np.array([c.current for c in capacities], dtype=np.float64)[row_endpoint]
    # Ready instances expected to report; those that timed out are not.
    ready = np.array([c.ready for c in capacities], dtype=np.int64)
    expected = (ready - np.array(silent_ready, dtype=np.int64))[row_endpoint]
    seen_event = np.array(tracked, dtype=np.bool_)[row_endpoint]

    # The window results (``Engine._observations`` per endpoint).
    query_rows = results.position[query_ids]
    sums = results.sums[query_rows, groups]
    reporting = results.counts[query_rows, groups]
    stale = results.stale[groups]
    missing_ready = np.maximum(0, expected - results.fresh_ready[groups])
    stale = stale + np.where(per_instance & seen_event, missing_ready, 0)
    has_data = reporting > 0
    value = np.where(mean, sums / np.where(has_data, reporting, 1), sums)

    # ``TargetTracking.recommend_observed``, one operation per line of it.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        total = np.where(mean, value * reporting, value)
        load_down = np.where(mean, total + target * np.maximum(0, current - reporting), total)
        desired_up = np.maximum(0.0, np.ceil(total / target - EPSILON))
        desired_down = np.maximum(0.0, np.ceil(load_down / target - EPSILON))
        up = desired_up > current
        down = ~up & (desired_down < current)
        desired = np.where(up, desired_up, np.where(down, desired_down, current))
        load = np.where(down, load_down, total)
        ratio = np.divide(
            load, current * target, out=np.full(load.shape, np.nan), where=current > 0
        )
    exact = ~has_data | (
        (np.abs(desired_up) < _EXACT_LIMIT)
        & (np.abs(desired_down) < _EXACT_LIMIT)
        & (current < _EXACT_LIMIT)
    )
    # Invalid recommendations ask for the current capacity; other inexact ones are not read.
    desired = np.where(exact & has_data, desired, np.where(current < _EXACT_LIMIT, current, 0.0))
    return Tracked(
        has_data,
        desired,
        ratio,
        has_data & (stale == 0),
        exact,
        reporting.tolist(),
        stale.tolist(),
        np.where(has_data, value, np.nan).tolist(),
        load.tolist(),
        desired.astype(np.int64).tolist(),
        ratio.tolist(),
    )

"""The behavior stages for many endpoints at once, with their state in numpy arrays.

``BehaviorRows`` holds the settings and the state of ``behavior.run_stages`` for many endpoints,
one row each, and ``run_rows`` runs every stage for a set of rows in one set of array operations.
The engine uses it for groups of endpoints whose policies are all target tracking; the values
it returns are equal to those of ``run_stages``, and the engine builds the notes and the
``Decision`` from them with the same functions ``run_stages`` uses.

State layout, per row:

- ``started_at``, ``last_scale_up_at``, ``last_change_at``: seconds, NaN for None.
- The two stabilization deques of ``BehaviorState`` as ``_Deques``: the first ``length[r]``
  columns of ``times[r]`` and ``values[r]`` are the deque's entries, oldest first. Values in a
  deque strictly increase (scale-up window, minimum first) or strictly decrease (scale-down
  window, maximum first), which is what lets ``_Deques.push`` find the entries a push removes
  by counting.
- The scale events as ``_Deques`` of (time, change in capacity).

Every capacity in the state and every capacity a row is evaluated with is below
``ROW_LIMIT`` (2**40), so capacities, their sums and the float64 arithmetic of the rate
policies are exact. Rows whose inputs break this are reported as not ``ok`` and are left
unchanged, and the engine runs ``run_stages`` for them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from warmstart.engine.behavior import (
    Behavior,
    BehaviorState,
    RateKind,
    SelectPolicy,
    assemble_decision,
    describe_bounds,
    describe_cooldown,
    describe_hold,
    describe_rate_limit,
    describe_raw,
    describe_stabilization,
    describe_tolerance,
)
from warmstart.engine.decision import Decision
from warmstart.engine.policy.base import Recommendation

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
_T = TypeVar("_T", bound=np.generic)

# Capacities at or above this are left to ``run_stages``; see the module docstring.
ROW_LIMIT = 2**40

_SELECT_CODES = {SelectPolicy.MAX: 0, SelectPolicy.MIN: 1, SelectPolicy.DISABLED: 2}

# Bits of ``RowStages.bounds``: what the bounds stage did.
BOUNDS_CLAMPED = 1
BOUNDS_WAITS = 2
BOUNDS_FIRST_SAMPLE = 4


def _grow_rows(array: npt.NDArray[_T], rows: int, fill: object) -> npt.NDArray[_T]:
    grown: npt.NDArray[_T] = np.full((rows, *array.shape[1:]), fill, dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


def _grow_columns(array: npt.NDArray[_T], columns: int, fill: object) -> npt.NDArray[_T]:
    grown: npt.NDArray[_T] = np.full((array.shape[0], columns), fill, dtype=array.dtype)
    grown[:, : array.shape[1]] = array
    return grown


class _Deques:
    """One deque of (time, integer value) pairs per row, as padded arrays."""

    def __init__(self, rows: int, columns: int = 4) -> None:
        self.times: FloatArray = np.zeros((rows, columns))
        self.values: IntArray = np.zeros((rows, columns), dtype=np.int64)
        self.length: IntArray = np.zeros(rows, dtype=np.int64)

    def grow_rows(self, rows: int) -> None:
        self.times = _grow_rows(self.times, rows, 0.0)
        self.values = _grow_rows(self.values, rows, 0)
        self.length = _grow_rows(self.length, rows, 0)

    def ensure_room(self, rows: IntArray) -> None:
        """Widen the arrays so each of ``rows`` has room for one more entry."""
        needed = int(self.length[rows].max(initial=0)) + 1
        columns = self.times.shape[1]
        if needed > columns:
            columns = max(needed, 2 * columns)
            self.times = _grow_columns(self.times, columns, 0.0)
            self.values = _grow_columns(self.values, columns, 0)

    def entries(self, row: int) -> deque[tuple[float, int]]:
        length = int(self.length[row])
        return deque(
            zip(
                self.times[row, :length].tolist(),
                self.values[row, :length].tolist(),
                strict=True,
            )
        )

    def store(self, row: int, entries: deque[tuple[float, int]]) -> None:
        if len(entries) > self.times.shape[1]:
            self.times = _grow_columns(self.times, len(entries), 0.0)
            self.values = _grow_columns(self.values, len(entries), 0)
        self.length[row] = len(entries)
        for column, (at, value) in enumerate(entries):
            self.times[row, column] = at
            self.values[row, column] = value


@dataclass(slots=True)
class _Pushed:
    """Deque contents of some rows after a push, before they are stored."""

    times: FloatArray
    values: IntArray
    length: IntArray


def _push(
    deques: _Deques,
    rows: IntArray,
    values: IntArray,
    now: float,
    oldest: FloatArray,
    keep_smaller: bool,
) -> tuple[IntArray, _Pushed]:
    """Push ``values`` at ``now`` like the stabilization step of ``run_stages``.

    Drop the entries at the back that are not smaller (``keep_smaller``) or not larger than the
    new value, append it, drop entries older than ``oldest`` from the front, and return the
    first value of each deque with the new contents. ``deques.ensure_room(rows)`` must come
    first.
    """
    length = deques.length[rows]
    # Only the columns in use and one for the new entry take part.
    width = int(length.max(initial=0)) + 1
    times = deques.times[rows, :width]
    stored = deques.values[rows, :width]
    columns = np.arange(width)
    live = columns < length[:, None]
    # Values in a deque are monotonic, so the entries that stay form a prefix.
    if keep_smaller:
        kept = np.count_nonzero(live & (stored < values[:, None]), axis=1)
    else:
        kept = np.count_nonzero(live & (stored > values[:, None]), axis=1)
    index = np.arange(rows.size)
    times[index, kept] = now
    stored[index, kept] = values
    length = kept + 1
    # The new entry is never older than ``oldest``, so every row has a first entry to keep.
    live = columns < length[:, None]
    first = np.argmax(live & (times >= oldest[:, None]), axis=1)
    bound = stored[index, first]
    return bound, _shift(times, stored, length, first)


def _shift(times: FloatArray, values: IntArray, length: IntArray, first: IntArray) -> _Pushed:
    """Return the deques without their first ``first`` entries."""
    if first.any():
        columns = np.arange(times.shape[1])
        source = np.minimum(columns + first[:, None], times.shape[1] - 1)
        times = np.take_along_axis(times, source, axis=1)
        values = np.take_along_axis(values, source, axis=1)
        length = length - first
    return _Pushed(times, values, length)


def _store(deques: _Deques, rows: IntArray, pushed: _Pushed) -> None:
    """Store the first columns of ``rows``; the columns beyond are past every row's length."""
    width = pushed.times.shape[1]
    deques.times[rows, :width] = pushed.times
    deques.values[rows, :width] = pushed.values
    deques.length[rows] = pushed.length


class _RatePolicies:
    """The rate policies of one direction, one row per endpoint, padded to the longest list.

    ``step`` is ``floor(value)`` for instance policies and ``factor`` is ``1 + value / 100``
    (scale-up) or ``1 - value / 100`` (scale-down) for percent policies, computed as
    ``run_stages`` computes them.
    """

    def __init__(self, rows: int) -> None:
        self.present: BoolArray = np.zeros((rows, 0), dtype=np.bool_)
        self.pods: BoolArray = np.zeros((rows, 0), dtype=np.bool_)
        self.step: FloatArray = np.zeros((rows, 0))
        self.factor: FloatArray = np.zeros((rows, 0))
        self.period_s: FloatArray = np.zeros((rows, 0))
        self.select: IntArray = np.zeros(rows, dtype=np.int64)

    def grow_rows(self, rows: int) -> None:
        self.present = _grow_rows(self.present, rows, False)
        self.pods = _grow_rows(self.pods, rows, False)
        self.step = _grow_rows(self.step, rows, 0.0)
        self.factor = _grow_rows(self.factor, rows, 0.0)
        self.period_s = _grow_rows(self.period_s, rows, 0.0)
        self.select = _grow_rows(self.select, rows, 0)

    def set(self, row: int, policies: tuple[object, ...], select: SelectPolicy, up: bool) -> None:
        if len(policies) > self.present.shape[1]:
            columns = len(policies)
            self.present = _grow_columns(self.present, columns, False)
            self.pods = _grow_columns(self.pods, columns, False)
            self.step = _grow_columns(self.step, columns, 0.0)
            self.factor = _grow_columns(self.factor, columns, 0.0)
            self.period_s = _grow_columns(self.period_s, columns, 0.0)
        self.present[row] = False
        self.select[row] = _SELECT_CODES[select]
        for column, policy in enumerate(policies):
            self.present[row, column] = True
            self.pods[row, column] = policy.kind is RateKind.PODS  # type: ignore[attr-defined]
            value = policy.value  # type: ignore[attr-defined]
            self.step[row, column] = math.floor(value)
            self.factor[row, column] = 1 + value / 100 if up else 1 - value / 100
            self.period_s[row, column] = policy.period_s  # type: ignore[attr-defined]


class BehaviorRows:
    """Behavior settings and state of many endpoints, one row each; see the module docstring."""

    def __init__(self) -> None:
        rows = 16
        self._free: list[int] = []
        self._used = 0
        self.tolerance = np.zeros(rows)
        self.up_window_s = np.zeros(rows)
        self.down_window_s = np.zeros(rows)
        self.up_cooldown_s = np.zeros(rows)
        self.down_cooldown_s = np.zeros(rows)
        self.zero_after_s = np.zeros(rows)
        self.min_capacity = np.zeros(rows, dtype=np.int64)
        self.max_capacity = np.zeros(rows, dtype=np.int64)
        self.restart_hold_s = np.zeros(rows)
        self.longest_period_s = np.zeros(rows)
        self.up_rates = _RatePolicies(rows)
        self.down_rates = _RatePolicies(rows)
        self.started_at = np.full(rows, np.nan)
        self.last_scale_up_at = np.full(rows, np.nan)
        self.last_change_at = np.full(rows, np.nan)
        self.up_candidates = _Deques(rows)
        self.down_candidates = _Deques(rows)
        self.events = _Deques(rows)

    def _grow(self) -> None:
        rows = 2 * self.tolerance.shape[0]
        for name in (
            "tolerance",
            "up_window_s",
            "down_window_s",
            "up_cooldown_s",
            "down_cooldown_s",
            "zero_after_s",
            "min_capacity",
            "max_capacity",
            "restart_hold_s",
            "longest_period_s",
        ):
            setattr(self, name, _grow_rows(getattr(self, name), rows, 0))
        for name in ("started_at", "last_scale_up_at", "last_change_at"):
            setattr(self, name, _grow_rows(getattr(self, name), rows, np.nan))
        self.up_rates.grow_rows(rows)
        self.down_rates.grow_rows(rows)
        self.up_candidates.grow_rows(rows)
        self.down_candidates.grow_rows(rows)
        self.events.grow_rows(rows)

    def add(
        self,
        behavior: Behavior,
        min_capacity: int,
        max_capacity: int,
        restart_hold_s: float,
        longest_period_s: float,
        state: BehaviorState,
    ) -> int | None:
        """Return a new row holding ``state``, or None if it does not fit (see ``store``).

        Endpoints with a capacity bound of ``ROW_LIMIT`` or more, or a rate policy whose value
        is not finite, get no row: ``run_stages`` handles them.
        """
        if not max_capacity < ROW_LIMIT:
            return None
        rates = behavior.scale_up.policies + behavior.scale_down.policies
        if not all(math.isfinite(policy.value) for policy in rates):
            return None
        if self._free:
            row = self._free.pop()
        else:
            if self._used == self.tolerance.shape[0]:
                self._grow()
            row = self._used
            self._used += 1
        self.tolerance[row] = behavior.tolerance
        self.up_window_s[row] = behavior.scale_up.stabilization_window_s
        self.down_window_s[row] = behavior.scale_down.stabilization_window_s
        self.up_cooldown_s[row] = behavior.scale_up.cooldown_s
        self.down_cooldown_s[row] = behavior.scale_down.cooldown_s
        self.zero_after_s[row] = behavior.scale_to_zero_after_s
        self.min_capacity[row] = min_capacity
        self.max_capacity[row] = max_capacity
        self.restart_hold_s[row] = restart_hold_s
        self.longest_period_s[row] = longest_period_s
        self.up_rates.set(row, behavior.scale_up.policies, behavior.scale_up.select, True)
        self.down_rates.set(row, behavior.scale_down.policies, behavior.scale_down.select, False)
        if not self.store(row, state):
            self.remove(row)
            return None
        return row

    def remove(self, row: int) -> None:
        """Free ``row`` for a later ``add``."""
        self._free.append(row)

    def state(self, row: int) -> BehaviorState:
        """Return the state of ``row`` as a new ``BehaviorState``."""
        return BehaviorState(
            started_at=_optional(self.started_at[row]),
            up_candidates=self.up_candidates.entries(row),
            down_candidates=self.down_candidates.entries(row),
            scale_events=self.events.entries(row),
            last_scale_up_at=_optional(self.last_scale_up_at[row]),
            last_change_at=_optional(self.last_change_at[row]),
        )

    def store(self, row: int, state: BehaviorState) -> bool:
        """Set the state of ``row`` to ``state``; return False, changing nothing, if it does not
        fit: a capacity of ``ROW_LIMIT`` or more, or a time that is NaN."""
        times = [state.started_at, state.last_scale_up_at, state.last_change_at]
        for entries in (state.up_candidates, state.down_candidates, state.scale_events):
            for at, value in entries:
                if not -ROW_LIMIT < value < ROW_LIMIT:
                    return False
                times.append(at)
        if any(at is not None and math.isnan(at) for at in times):
            return False
        self.started_at[row] = _stored(state.started_at)
        self.last_scale_up_at[row] = _stored(state.last_scale_up_at)
        self.last_change_at[row] = _stored(state.last_change_at)
        self.up_candidates.store(row, state.up_candidates)
        self.down_candidates.store(row, state.down_candidates)
        self.events.store(row, state.scale_events)
        return True


def _optional(value: np.float64) -> float | None:
    return None if np.isnan(value) else float(value)


def _stored(value: float | None) -> float:
    return math.nan if value is None else value


@dataclass(slots=True)
class RowInputs:
    """The recommendations of the endpoints of one ``run_rows`` call, one entry per policy.

    Each endpoint's policies are consecutive, starting at ``start[j]`` for endpoint ``j``;
    ``endpoint`` gives each entry's endpoint. ``desired`` is only read where ``valid``, and
    ``usage_ratio`` is NaN where the recommendation has none. ``exact`` is False where the
    recommendation could not be computed exactly in numpy.
    """

    start: IntArray
    endpoint: IntArray
    valid: BoolArray
    desired: FloatArray
    usage_ratio: FloatArray
    scale_down_allowed: BoolArray
    exact: BoolArray


@dataclass(slots=True)
class RowStages:
    """What ``run_rows`` computed, per endpoint.

    ``values[j]`` lists, for endpoint ``j``: ok (1 if the row was evaluated, 0 if the engine
    must run ``run_stages`` for it), the number of valid recommendations, the position of the
    winning one among the endpoint's policies (-1: none), then the value after raw,
    tolerance, hold, stabilization, rate limit, cooldown and bounds, the scale-up and
    scale-down stabilization bounds, and the ``BOUNDS_*`` bits. ``observed_s`` is the time
    since the row's first evaluation (for the hold note), ``cooldown_since_s`` the time since
    the change that started a cooldown (for the cooldown note).
    """

    values: list[list[int]]
    observed_s: list[float]
    cooldown_since_s: list[float]


def _segment_max(values: FloatArray, inputs: RowInputs, single: bool) -> FloatArray:
    return values if single else np.maximum.reduceat(values, inputs.start)


def _segment_count(flags: BoolArray, inputs: RowInputs, single: bool) -> IntArray:
    counts = flags.astype(np.int64)
    return counts if single else np.add.reduceat(counts, inputs.start)


def run_rows(
    table: BehaviorRows,
    rows: IntArray,
    now: float,
    current: IntArray,
    idle_s: FloatArray,
    woken: BoolArray,
    inputs: RowInputs,
) -> RowStages:
    """Run every stage for the endpoints in ``rows`` (distinct) and update their state.

    ``current``, ``idle_s`` and ``woken`` are per endpoint, as ``run_stages`` takes them;
    ``now`` must be finite. Rows whose result would not be exact are left unchanged and
    reported with ok 0.
    """
    count = rows.size
    single = inputs.valid.size == count
    current_f = current.astype(np.float64)
    valid = inputs.valid

    # Raw: the maximum valid recommendation; the first one with that value wins.
    valid_desired = np.where(valid, inputs.desired, -np.inf)
    best = _segment_max(valid_desired, inputs, single)
    n_valid = _segment_count(valid, inputs, single)
    has_valid = n_valid > 0
    raw = np.where(has_valid, best, current_f)
    if single:
        winner = np.where(has_valid, 0, -1)
    else:
        positions = np.arange(valid.size) - inputs.start[inputs.endpoint]
        is_best = valid & (inputs.desired == best[inputs.endpoint])
        first_best = np.minimum.reduceat(np.where(is_best, positions, valid.size), inputs.start)
        winner = np.where(has_valid, first_best, -1)

    # Tolerance: a recommendation within the band counts as the current capacity.
    within = np.abs(inputs.usage_ratio - 1.0) <= table.tolerance[rows][inputs.endpoint]
    tolerated_each = np.where(within, current_f[inputs.endpoint], inputs.desired)
    tolerated_best = _segment_max(np.where(valid, tolerated_each, -np.inf), inputs, single)
    tolerated = np.where(has_valid, tolerated_best, raw)

    # Hold: no scale-down without data from every policy or before the restart hold ends.
    started = table.started_at[rows]
    started = np.where(np.isnan(started), now, started)
    observed_s = now - started
    any_invalid = n_valid < _segment_count(np.ones(valid.size, dtype=np.bool_), inputs, single)
    any_blocked = _segment_count(valid & ~inputs.scale_down_allowed, inputs, single) > 0
    restarting = observed_s < table.restart_hold_s[rows]
    blocked = (tolerated < current_f) & (any_invalid | any_blocked | ~has_valid | restarting)
    held_f = np.where(blocked, current_f, tolerated)

    ok = (current < ROW_LIMIT) & (np.abs(held_f) < ROW_LIMIT) & (np.abs(raw) < ROW_LIMIT)
    exact = inputs.exact if single else np.logical_and.reduceat(inputs.exact, inputs.start)
    ok &= exact
    held = np.where(ok, held_f, 0).astype(np.int64)

    # Stabilization.
    table.up_candidates.ensure_room(rows)
    table.down_candidates.ensure_room(rows)
    up_bound, up_pushed = _push(
        table.up_candidates, rows, held, now, now - table.up_window_s[rows], keep_smaller=True
    )
    down_bound, down_pushed = _push(
        table.down_candidates, rows, held, now, now - table.down_window_s[rows], keep_smaller=False
    )
    stable = np.minimum(np.maximum(current, up_bound), down_bound)

    # Rate limits, from the changes within each policy's period.
    events = table.events
    event_length = events.length[rows]
    event_width = int(event_length.max(initial=0))
    event_times = events.times[rows, :event_width]
    event_changes = events.values[rows, :event_width]
    event_live = np.arange(event_width) < event_length[:, None]
    added_each = np.where(event_live & (event_changes > 0), event_changes, 0)
    removed_each = np.where(event_live & (event_changes < 0), -event_changes, 0)
    limited = stable
    rising = stable > current
    if rising.any():
        up_limit = _up_limit(table.up_rates, rows, now, current_f, event_times, added_each)
        limited = np.where(rising & (stable > up_limit), up_limit, limited)
    falling = stable < current
    if falling.any():
        down_limit = _down_limit(table.down_rates, rows, now, current_f, event_times, removed_each)
        limited = np.where(falling & (stable < down_limit), down_limit, limited)
    limited = limited.astype(np.int64)

    # Cooldowns; NaN times (no change yet) compare False.
    last_up = table.last_scale_up_at[rows]
    last_change = table.last_change_at[rows]
    cooling_up = (limited > current) & (current > 0) & (now - last_up < table.up_cooldown_s[rows])
    cooling_down = (limited < current) & (now - last_change < table.down_cooldown_s[rows])
    cooled = np.where(cooling_up | cooling_down, current, limited)
    cooldown_since_s = np.where(cooling_up, now - last_up, now - last_change)

    # Bounds and scale to zero.
    min_capacity = table.min_capacity[rows]
    max_capacity = table.max_capacity[rows]
    scales_to_zero = (min_capacity == 0) & (max_capacity > 0)
    clamped = np.minimum(np.maximum(cooled, min_capacity), max_capacity)
    idle_enough = idle_s >= table.zero_after_s[rows]
    waits = scales_to_zero & (clamped == 0) & (current > 0) & ~idle_enough
    bounded = np.where(waits, 1, clamped)
    first_sample = scales_to_zero & (bounded == 0) & (current == 0) & woken
    bounded = np.where(first_sample, 1, bounded)
    bounds_bits = (
        (clamped != cooled) * BOUNDS_CLAMPED
        + waits * BOUNDS_WAITS
        + first_sample * BOUNDS_FIRST_SAMPLE
    )

    _remember(table, rows[ok], now, (bounded - current)[ok], ok, up_pushed, down_pushed, started)

    values = np.stack(
        [
            ok,
            n_valid,
            winner,
            raw,
            tolerated,
            held,
            stable,
            limited,
            cooled,
            bounded,
            up_bound,
            down_bound,
            bounds_bits,
        ],
        axis=1,
    )
    return RowStages(
        np.where(ok[:, None], values, 0).astype(np.int64).tolist(),
        observed_s.tolist(),
        cooldown_since_s.tolist(),
    )


def row_decision(
    endpoint: str,
    behavior: Behavior,
    min_capacity: int,
    max_capacity: int,
    restart_hold_s: float,
    now: float,
    current: int,
    recommendations: Sequence[Recommendation],
    values: list[int],
    observed_s: float,
    cooldown_since_s: float,
) -> Decision:
    """Return the decision ``run_stages`` would make, from one endpoint's ``run_rows`` results.

    ``values``, ``observed_s`` and ``cooldown_since_s`` are the endpoint's entries of
    ``RowStages``, which must be ok; the other arguments are those ``run_stages`` takes.
    """
    (
        _,
        n_valid,
        winner,
        raw,
        tolerated,
        held,
        stable,
        limited,
        cooled,
        bounded,
        up_bound,
        down_bound,
        bounds_bits,
    ) = values
    # The notes of the stages that changed the value, as ``run_stages`` writes them.
    tolerance_note = hold_note = stabilization_note = ""
    rate_note = cooldown_note = bounds_note = ""
    if tolerated != raw:
        tolerance_note = describe_tolerance(behavior.tolerance, tolerated)
    if held != tolerated:
        hold_note = describe_hold(
            [r.policy for r in recommendations if not r.valid and not r.floor_only],
            [r.policy for r in recommendations if r.valid and not r.scale_down_allowed],
            n_valid > 0,
            observed_s,
            restart_hold_s,
        )
    if stable != held:
        stabilization_note = describe_stabilization(behavior, held, stable, up_bound, down_bound)
    if limited != stable:
        rate_note = describe_rate_limit(stable > current, limited)
    if cooled != limited:
        up = limited > current
        rules = behavior.scale_up if up else behavior.scale_down
        cooldown_note = describe_cooldown(up, cooldown_since_s, rules.cooldown_s)
    if bounds_bits:
        bounds_note = describe_bounds(
            behavior,
            min_capacity,
            max_capacity,
            bool(bounds_bits & BOUNDS_CLAMPED),
            bool(bounds_bits & BOUNDS_WAITS),
            bool(bounds_bits & BOUNDS_FIRST_SAMPLE),
        )
    return assemble_decision(
        endpoint,
        now,
        current,
        recommendations,
        recommendations[winner] if winner >= 0 else None,
        raw,
        describe_raw(n_valid),
        tolerated,
        tolerance_note,
        held,
        hold_note,
        stable,
        stabilization_note,
        limited,
        rate_note,
        cooled,
        cooldown_note,
        bounded,
        bounds_note,
    )


def _changes_by_column(
    policies: _RatePolicies,
    rows: IntArray,
    now: float,
    event_times: FloatArray,
    changes: IntArray,
) -> list[tuple[BoolArray, IntArray]]:
    """Return, per policy column, which rows have a policy there and the sum of ``changes``
    over the events within its period. Columns with the same periods share one sum."""
    columns: list[tuple[BoolArray, IntArray]] = []
    previous_period_s: FloatArray | None = None
    summed: IntArray | None = None
    for column in range(policies.present.shape[1]):
        present = policies.present[rows, column]
        period_s = policies.period_s[rows, column]
        if (
            summed is None
            or previous_period_s is None
            or not np.array_equal(period_s, previous_period_s)
        ):
            recent = event_times > (now - period_s)[:, None]
            summed = np.where(recent, changes, 0).sum(axis=1)
            previous_period_s = period_s
        columns.append((present, summed))
    return columns


def _up_limit(
    policies: _RatePolicies,
    rows: IntArray,
    now: float,
    current_f: FloatArray,
    event_times: FloatArray,
    added_each: IntArray,
) -> FloatArray:
    """Return the highest capacity the scale-up rate policies allow; inf for no limit."""
    highest = np.full(rows.size, -np.inf)
    lowest = np.full(rows.size, np.inf)
    columns = _changes_by_column(policies, rows, now, event_times, added_each)
    for column, (present, added) in enumerate(columns):
        start = current_f - added
        allowed = np.where(
            policies.pods[rows, column],
            start + policies.step[rows, column],
            # Percent of zero is zero; from zero the period start counts as one instance.
            np.ceil(np.maximum(start, 1.0) * policies.factor[rows, column] - 1e-9),
        )
        highest = np.where(present, np.maximum(highest, allowed), highest)
        lowest = np.where(present, np.minimum(lowest, allowed), lowest)
    select = policies.select[rows]
    limit = np.where(select == _SELECT_CODES[SelectPolicy.MAX], highest, lowest)
    # With no policies, ``highest`` is -inf and ``lowest`` inf; both mean no limit.
    limit = np.where(np.isinf(limit), np.inf, limit)
    return np.where(select == _SELECT_CODES[SelectPolicy.DISABLED], current_f, limit)


def _down_limit(
    policies: _RatePolicies,
    rows: IntArray,
    now: float,
    current_f: FloatArray,
    event_times: FloatArray,
    removed_each: IntArray,
) -> FloatArray:
    """Return the lowest capacity the scale-down rate policies allow."""
    highest = np.full(rows.size, -np.inf)
    lowest = np.full(rows.size, np.inf)
    columns = _changes_by_column(policies, rows, now, event_times, removed_each)
    for column, (present, removed) in enumerate(columns):
        start = current_f + removed
        allowed = np.where(
            policies.pods[rows, column],
            start - policies.step[rows, column],
            np.floor(start * policies.factor[rows, column] + 1e-9),
        )
        highest = np.where(present, np.maximum(highest, allowed), highest)
        lowest = np.where(present, np.minimum(lowest, allowed), lowest)
    select = policies.select[rows]
    # MAX selects the policy allowing the largest change, which is the lowest limit.
    limit = np.where(select == _SELECT_CODES[SelectPolicy.MAX], lowest, highest)
    # With no policies the limit is 0.
    limit = np.where(np.isinf(limit), 0.0, limit)
    return np.where(select == _SELECT_CODES[SelectPolicy.DISABLED], current_f, limit)


def _remember(
    table: BehaviorRows,
    rows: IntArray,
    now: float,
    delta: IntArray,
    ok: BoolArray,
    up_pushed: _Pushed,
    down_pushed: _Pushed,
    started: FloatArray,
) -> None:
    """Store the new state of the ``ok`` rows: start time, deques, changes and change times.

    ``rows`` and ``delta`` hold only the ``ok`` rows, the other arguments every row.
    """
    if ok.all():
        table.started_at[rows] = started
        _store(table.up_candidates, rows, up_pushed)
        _store(table.down_candidates, rows, down_pushed)
    else:
        table.started_at[rows] = started[ok]
        _store(
            table.up_candidates,
            rows,
            _Pushed(up_pushed.times[ok], up_pushed.values[ok], up_pushed.length[ok]),
        )
        _store(
            table.down_candidates,
            rows,
            _Pushed(down_pushed.times[ok], down_pushed.values[ok], down_pushed.length[ok]),
        )
    changed = delta != 0
    table.last_change_at[rows[changed]] = now
    table.last_scale_up_at[rows[delta > 0]] = now

    events = table.events
    events.ensure_room(rows)
    changed_rows = rows[changed]
    events.times[changed_rows, events.length[changed_rows]] = now
    events.values[changed_rows, events.length[changed_rows]] = delta[changed]
    events.length[changed_rows] += 1
    # Forget the changes older than every rate period, oldest first.
    length = events.length[rows]
    width = int(length.max(initial=0))
    if width == 0:
        return
    times = events.times[rows, :width]
    live = np.arange(width) < length[:, None]
    keep = live & (times > now - table.longest_period_s[rows][:, None])
    first = np.where(keep.any(axis=1), np.argmax(keep, axis=1), length)
    if first.any():
        shifted = _shift(times, events.values[rows, :width], length, first)
        _store(events, rows, shifted)

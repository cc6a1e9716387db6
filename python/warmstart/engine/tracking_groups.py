"""Endpoints whose policies are all target tracking, decided in groups with numpy.

``TrackingGroups.decide`` evaluates a group in three steps: ``batch.track`` computes every
policy's recommendation, ``behavior_rows.run_rows`` runs the behavior stages, and a loop builds
each ``Recommendation`` and ``Decision`` with the functions ``behavior.run_stages`` uses, so
the decisions equal those of deciding one endpoint at a time. While an endpoint is decided in
groups its behavior state lives in a row of ``behavior_rows``; deciding it alone moves the
state back (``take_state``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from warmstart.engine.batch import Tracked, TrackingRows, WindowResults, track
from warmstart.engine.behavior import BehaviorState
from warmstart.engine.behavior_rows import (
    ROW_LIMIT,
    BehaviorRows,
    RowInputs,
    row_decision,
    run_rows,
)
from warmstart.engine.decision import Decision
from warmstart.engine.policy.base import Capacity, Recommendation
from warmstart.engine.runtime import EndpointRuntime

IntArray = npt.NDArray[np.int64]

# Groups smaller than this are decided one endpoint at a time, because the numpy calls of a
# group cost more than that.
MIN_GROUP = 32


class TrackingGroups:
    """Policy and behavior rows of the target-tracking endpoints, and their group decisions."""

    def __init__(self) -> None:
        self.tracking_rows = TrackingRows()
        self.behavior_rows = BehaviorRows()
        # The endpoints of the last group and their rows for ``track`` (``_group_rows``).
        self._last_group: list[EndpointRuntime] = []
        self._last_group_rows: tuple[IntArray, IntArray, IntArray] | None = None

    def release(self, runtime: EndpointRuntime) -> None:
        """Free the behavior row of a removed endpoint."""
        if runtime.behavior_row is not None:
            self.behavior_rows.remove(runtime.behavior_row)
            runtime.behavior_row = None

    def take_state(self, runtime: EndpointRuntime) -> BehaviorState:
        """Return the endpoint's behavior state as a ``BehaviorState``, moving it out of its
        row of ``behavior_rows`` if it has one."""
        row = runtime.behavior_row
        if row is not None:
            runtime.behavior_state = self.behavior_rows.state(row)
            self.behavior_rows.remove(row)
            runtime.behavior_row = None
        state = runtime.behavior_state
        assert state is not None
        return state

    def decide(
        self,
        group: Sequence[EndpointRuntime],
        now: float,
        results: WindowResults,
        last_active: npt.NDArray[np.float64],
        decide_one: Callable[[EndpointRuntime], Decision],
        apply: Callable[[EndpointRuntime, Decision], None],
    ) -> list[Decision]:
        """Decide for each endpoint of ``group`` and return the decisions in the same order.

        Every endpoint of ``group`` has only target-tracking policies and appears once. ``now``
        must be finite. ``last_active`` is ``SeriesStore.last_active``. ``apply`` records a
        decision; ``decide_one`` decides for one endpoint alone and records its decision, and
        is used for small groups and for the endpoints ``run_rows`` cannot evaluate exactly.
        """
        if len(group) < MIN_GROUP:
            return [decide_one(runtime) for runtime in group]
        table = self.behavior_rows
        decisions: list[Decision | None] = [None] * len(group)
        members: list[int] = []
        endpoints: list[EndpointRuntime] = []
        capacities: list[Capacity] = []
        rows: list[int] = []
        for position, runtime in enumerate(group):
            capacity = runtime.capacity()
            row = runtime.behavior_row
            if row is None and capacity.current < ROW_LIMIT:
                row = self._move_to_row(runtime)
            if row is None or capacity.current >= ROW_LIMIT:
                decisions[position] = decide_one(runtime)
                continue
            members.append(position)
            endpoints.append(runtime)
            capacities.append(capacity)
            rows.append(row)
        if not endpoints:
            return _all_decided(decisions)

        row_ids, row_endpoint, start = self._group_rows(endpoints)
        tracked = track(
            self.tracking_rows,
            row_ids,
            row_endpoint,
            capacities,
            [runtime.instances.seen_event for runtime in endpoints],
            [runtime.instances.silent_ready for runtime in endpoints],
            results,
        )
        current = np.array([capacity.current for capacity in capacities], dtype=np.int64)
        rows_array = np.array(rows, dtype=np.int64)
        # ``idle_s`` and ``woken`` as ``_decide`` computes them.
        active_at = last_active[[runtime.index for runtime in endpoints]]
        started = table.started_at[rows_array]
        idle_s = now - np.maximum(active_at, np.where(np.isnan(started), now, started))
        zero_since = np.array(
            [math.nan if e.zero_since is None else e.zero_since for e in endpoints]
        )
        woken = (current == 0) & (active_at > zero_since)
        stages = run_rows(
            table,
            rows_array,
            now,
            current,
            idle_s,
            woken,
            RowInputs(
                start,
                row_endpoint,
                tracked.valid,
                tracked.desired,
                tracked.ratio,
                tracked.scale_down_allowed,
                tracked.exact,
            ),
        )

        first_rows = start.tolist()
        for index, runtime in enumerate(endpoints):
            position = members[index]
            values = stages.values[index]
            if not values[0]:
                decisions[position] = decide_one(runtime)
                continue
            spec = runtime.spec
            current_capacity = capacities[index].current
            decision = row_decision(
                spec.name,
                spec.behavior,
                spec.min_capacity,
                spec.max_capacity,
                runtime.restart_hold_s,
                now,
                current_capacity,
                _recommendations(runtime, tracked, first_rows[index], current_capacity),
                values,
                stages.observed_s[index],
                stages.cooldown_since_s[index],
            )
            if runtime.timed_out:
                decision = runtime.note_timeouts(decision)
            apply(runtime, decision)
            decisions[position] = decision
        return _all_decided(decisions)

    def _move_to_row(self, runtime: EndpointRuntime) -> int | None:
        """Move the endpoint's behavior state into a new row of ``behavior_rows``.

        Return the row, or None if the state does not fit in one (see ``BehaviorRows.store``).
        """
        spec = runtime.spec
        state = runtime.behavior_state
        assert state is not None
        row = self.behavior_rows.add(
            spec.behavior,
            spec.min_capacity,
            spec.max_capacity,
            runtime.restart_hold_s,
            runtime.longest_rate_period_s,
            state,
        )
        if row is not None:
            runtime.behavior_row = row
            runtime.behavior_state = None
        return row

    def _group_rows(self, endpoints: list[EndpointRuntime]) -> tuple[IntArray, IntArray, IntArray]:
        """Return the tracking rows of ``endpoints``, each row's endpoint, and each endpoint's
        first row; reused while the same endpoints form a group."""
        cached = self._last_group_rows
        if cached is not None and endpoints == self._last_group:
            return cached
        row_ids: list[int] = []
        row_endpoint: list[int] = []
        start: list[int] = []
        for index, runtime in enumerate(endpoints):
            assert runtime.tracking_rows is not None
            start.append(len(row_ids))
            row_ids.extend(runtime.tracking_rows)
            row_endpoint.extend([index] * len(runtime.tracking_rows))
        cached = (
            np.array(row_ids, dtype=np.int64),
            np.array(row_endpoint, dtype=np.int64),
            np.array(start, dtype=np.int64),
        )
        self._last_group = endpoints
        self._last_group_rows = cached
        return cached


def _recommendations(
    runtime: EndpointRuntime, tracked: Tracked, row: int, current: int
) -> list[Recommendation]:
    """Return the endpoint's recommendations from ``tracked``, its rows starting at ``row``."""
    assert runtime.tracking is not None
    recommendations = []
    for tracking, plan_position in runtime.tracking:
        reporting = tracked.reporting[row]
        if reporting:
            recommendations.append(
                tracking.with_data(
                    tracked.value[row],
                    reporting,
                    tracked.stale[row],
                    runtime.plan[plan_position][3].aggregation,
                    tracked.load[row],
                    tracked.desired_list[row],
                    current,
                    tracked.ratio_list[row] if current > 0 else None,
                )
            )
        else:
            recommendations.append(tracking.no_data(tracked.stale[row], current))
        row += 1
    return recommendations


def _all_decided(decisions: list[Decision | None]) -> list[Decision]:
    done = [decision for decision in decisions if decision is not None]
    assert len(done) == len(decisions)
    return done

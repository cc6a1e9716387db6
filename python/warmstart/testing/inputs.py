"""Builders of policy inputs, for unit tests of a policy without an engine."""

from __future__ import annotations

from collections.abc import Mapping

from warmstart.engine.aggregate import Aggregation, Observation, WindowQuery
from warmstart.engine.policy.base import Capacity, PolicyInputs


def policy_inputs(
    values: Mapping[WindowQuery, float | None],
    *,
    current: int = 2,
    ready: int | None = None,
    pending: int = 0,
    reporting: int | None = None,
    stale: int = 0,
    aggregation: Aggregation = Aggregation.SUM,
    now: float = 1000.0,
    time_to_ready_s: float | None = None,
) -> PolicyInputs:
    """Return inputs in which each query observes the given endpoint value (None: no data).

    ``ready`` defaults to ``current - pending`` and ``reporting`` to ``ready``; ``stale`` is the
    number of stale or missing series for every query. Times are in seconds.
    """
    ready_count = current - pending if ready is None else ready
    reporting_count = ready_count if reporting is None else reporting
    observations = {}
    for query, value in values.items():
        count = 0 if value is None else reporting_count
        observations[query] = Observation(value, count, stale, aggregation)
    capacity = Capacity(current, ready_count, pending, time_to_ready_s)
    return PolicyInputs(now, capacity, observations)

"""The engine's record of one endpoint between evaluations: plan, capacity and state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from warmstart.engine.aggregate import WindowQuery
from warmstart.engine.behavior import BehaviorState, add_hold_note
from warmstart.engine.decision import Decision
from warmstart.engine.instances import InstanceTracker
from warmstart.engine.liveness import describe_timeouts
from warmstart.engine.policy.base import Capacity
from warmstart.engine.policy.target_tracking import TargetTracking
from warmstart.engine.spec import EndpointSpec, MetricSpec


# Compared by identity (eq=False): ``TrackingGroups`` compares lists of endpoints.
@dataclass(slots=True, eq=False)
class EndpointRuntime:
    """Per-endpoint state of the engine.

    See the ``Engine`` module docstring for how ``capacity()`` counts instances.
    """

    spec: EndpointSpec
    index: int
    table_id: int
    group_base: int
    restart_hold_s: float
    # ``longest_rate_period_s(spec.behavior)``, computed once.
    longest_rate_period_s: float
    queries: tuple[WindowQuery, ...]
    # Ids of the engine's distinct window queries (``Engine._query_keys``) that this endpoint
    # reads. Integer ids keep the per-pass bookkeeping free of tuple and enum hashing.
    query_ids: frozenset[int]
    metric_index: dict[str, int]
    # Per query: the query, its query id, its (endpoint, metric) group and the metric spec.
    plan: list[tuple[WindowQuery, int, int, MetricSpec]]
    # When every policy is a TargetTracking: each policy and the plan position of its query.
    # Target tracking is stateless and reads only its observation and the current capacity, so
    # these endpoints skip building PolicyInputs, and are decided in groups in numpy.
    tracking: tuple[tuple[TargetTracking, int], ...] | None
    # For the same endpoints: the rows of ``TrackingGroups.tracking_rows`` that hold these
    # policies, in policy order.
    tracking_rows: tuple[int, ...] | None
    # True when a policy forecasts load, so deciding may call the prefetch hook.
    forecasts: bool
    instances: InstanceTracker
    policy_states: list[Any]
    # The behavior state lives in ``behavior_state``, or in row ``behavior_row`` of
    # ``TrackingGroups.behavior_rows`` while the endpoint is decided in groups; the other is
    # None.
    behavior_state: BehaviorState | None = field(default_factory=BehaviorState)
    behavior_row: int | None = None
    requested: int = 0
    next_due: float | None = None
    zero_since: float | None = None
    last_decision: Decision | None = None
    last_prefetch: float | None = None
    # Capacity depends only on ``requested`` and the instance tracker, so it is kept until
    # either changes; ``cached_capacity`` must be set to None after every change to them.
    cached_capacity: Capacity | None = None
    # Instances that timed out since the last decision, and since when each was silent. The
    # next decision names them in its hold stage (``note_timeouts``).
    timed_out: list[tuple[str, float]] = field(default_factory=list)

    def note_timeouts(self, decision: Decision) -> Decision:
        """Return ``decision`` with the instances in ``timed_out`` named, and empty the list.

        The note goes to the hold stage, because the stale series of a silent instance held
        scale-down there.
        """
        note = describe_timeouts(self.timed_out, self.spec.effective_instance_timeout_s)
        self.timed_out.clear()
        return add_hold_note(decision, note)

    def capacity(self) -> Capacity:
        """Return the capacity the next decision starts from."""
        cached = self.cached_capacity
        if cached is not None:
            return cached
        tracker = self.instances
        if not tracker.seen_event:
            cached = Capacity(self.requested, self.requested, 0, tracker.time_to_ready_s)
        else:
            ready = tracker.ready
            starting = tracker.starting
            pending = starting + max(0, self.requested - ready - starting)
            cached = Capacity(ready + pending, ready, pending, tracker.time_to_ready_s)
        self.cached_capacity = cached
        return cached

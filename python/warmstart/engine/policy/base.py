"""The policy interface: pure functions from window views and capacity to a recommendation.

A policy reads only its ``PolicyInputs`` and the state it returned last time; it does no I/O and
never reads a clock, so the same inputs always give the same recommendation.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from warmstart.engine.aggregate import Observation, WindowQuery


@dataclass(frozen=True, slots=True)
class Capacity:
    """Instance counts of an endpoint at one evaluation.

    ``current`` is the capacity decisions are measured against: ``ready + pending`` once the
    engine receives instance events for the endpoint, otherwise the last decided capacity.
    ``time_to_ready_s`` is the expected seconds from launch to ready, or None if unknown.
    """

    current: int
    ready: int
    pending: int
    time_to_ready_s: float | None = None


@dataclass(frozen=True, slots=True)
class PolicyInputs:
    """Everything a policy may read: the time, the capacity and its window observations."""

    now: float
    capacity: Capacity
    observations: Mapping[WindowQuery, Observation]

    def observe(self, query: WindowQuery) -> Observation:
        """Return the observation for ``query``; a query the engine did not compute has no data."""
        return self.observations.get(query, _NO_DATA)


_NO_DATA = Observation(value=None, reporting=0, stale=0)


@dataclass(frozen=True, slots=True)
class Recommendation:
    """What one policy asks for at one evaluation.

    - ``desired``: the capacity the policy asks for.
    - ``valid``: False when the policy had no usable data; an invalid recommendation never
      changes capacity.
    - ``reason``: one readable sentence with the numbers behind ``desired``.
    - ``scale_down_allowed``: False when some input was missing or stale, so ``desired`` may be
      used to scale up but never to scale down.
    - ``floor_only``: True for forecasts that may raise capacity but never lower it.
    - ``usage_ratio``: observed load / (current capacity x target), for the tolerance band;
      None when the policy does not track a target.
    """

    policy: str
    desired: int
    valid: bool
    reason: str
    scale_down_allowed: bool = True
    floor_only: bool = False
    usage_ratio: float | None = None


_new_object = object.__new__
# Recommendation's slot descriptors, in field order, for ``build_recommendation``.
_RECOMMENDATION_SLOTS = tuple(
    getattr(Recommendation, name).__set__
    for name in (
        "policy",
        "desired",
        "valid",
        "reason",
        "scale_down_allowed",
        "floor_only",
        "usage_ratio",
    )
)


def build_recommendation(
    policy: str,
    desired: int,
    valid: bool,
    reason: str,
    scale_down_allowed: bool,
    floor_only: bool,
    usage_ratio: float | None,
) -> Recommendation:
    """Return ``Recommendation(policy, ..., usage_ratio)``, built without its ``__init__``.

    Setting the slots directly skips the frozen dataclass ``__init__``, which sets each field
    through ``object.__setattr__``; the engine builds one per target-tracking policy per
    evaluation. A test checks that it equals the constructor's result and sets every field.
    """
    recommendation = _new_object(Recommendation)
    (
        set_policy,
        set_desired,
        set_valid,
        set_reason,
        set_scale_down_allowed,
        set_floor_only,
        set_usage_ratio,
    ) = _RECOMMENDATION_SLOTS
    set_policy(recommendation, policy)
    set_desired(recommendation, desired)
    set_valid(recommendation, valid)
    set_reason(recommendation, reason)
    set_scale_down_allowed(recommendation, scale_down_allowed)
    set_floor_only(recommendation, floor_only)
    set_usage_ratio(recommendation, usage_ratio)
    return recommendation


class Policy(abc.ABC):
    """Base class of scaling policies. Subclasses are frozen dataclasses."""

    name: str

    @abc.abstractmethod
    def queries(self) -> tuple[WindowQuery, ...]:
        """Return the window queries this policy reads."""

    @property
    def longest_window_s(self) -> float:
        """Longest window this policy reads, in seconds."""
        return max((q.window_s for q in self.queries()), default=0.0)

    def initial_state(self) -> Any:
        """Return the state passed to the first ``recommend`` call (None if stateless)."""
        return None

    @abc.abstractmethod
    def recommend(self, inputs: PolicyInputs, state: Any) -> tuple[Recommendation, Any]:
        """Return a recommendation and the state to pass to the next call."""

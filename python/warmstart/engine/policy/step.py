"""Step scaling in the style of AWS Application Auto Scaling and EC2 Auto Scaling.

Each ``Step`` covers a half-open range ``[lower, upper)`` of the metric value (``None`` is
unbounded) and carries an adjustment. ``AdjustmentType`` gives its meaning:

- ``CHANGE_IN_CAPACITY``: add the adjustment (negative removes instances).
- ``PERCENT_CHANGE_IN_CAPACITY``: add that percentage of capacity. As AWS documents, a
  result above 1 is rounded down, between 0 and 1 becomes 1, between -1 and 0 becomes -1, and
  below -1 is rounded up (toward zero). ``min_adjustment_magnitude`` sets a floor on the
  absolute change.
- ``EXACT_CAPACITY``: set capacity to the adjustment.

A scale-out adjustment is applied to ready instances, and instances still starting count toward
the result, so one breach does not trigger a second scale-out while its instances start. A
scale-in adjustment is applied to the current capacity.
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from warmstart.engine.aggregate import WindowQuery
from warmstart.engine.errors import EngineConfigError
from warmstart.engine.policy.base import Policy, PolicyInputs, Recommendation
from warmstart.engine.window import Statistic


class AdjustmentType(enum.Enum):
    """Meaning of a step's ``adjustment``."""

    CHANGE_IN_CAPACITY = "change_in_capacity"
    PERCENT_CHANGE_IN_CAPACITY = "percent_change_in_capacity"
    EXACT_CAPACITY = "exact_capacity"


@dataclass(frozen=True, slots=True)
class Step:
    """A metric range ``[lower, upper)`` (None: unbounded) and the adjustment it triggers."""

    lower: float | None
    upper: float | None
    adjustment: float

    def contains(self, value: float) -> bool:
        """Return True if ``value`` falls within this step's range."""
        above = self.lower is None or value >= self.lower
        below = self.upper is None or value < self.upper
        return above and below


def percent_change(capacity: int, percent: float) -> int:
    """Return the instance change for ``percent`` of ``capacity``, rounded as AWS documents."""
    change = capacity * percent / 100.0
    if change == 0:
        return 0
    if change > 1:
        return math.floor(change)
    if change > 0:
        return 1
    if change >= -1:
        return -1
    return math.ceil(change)


@dataclass(frozen=True)
class StepScaling(Policy):
    """Adjust capacity by the step whose range contains the observed metric value."""

    metric: str
    steps: tuple[Step, ...]
    adjustment_type: AdjustmentType = AdjustmentType.CHANGE_IN_CAPACITY
    statistic: Statistic = Statistic.MEAN
    window_s: float = 60.0
    min_adjustment_magnitude: int | None = None
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.steps:
            raise EngineConfigError("steps must not be empty")
        ordered = sorted(self.steps, key=lambda s: -math.inf if s.lower is None else s.lower)
        for step in ordered:
            if step.lower is not None and step.upper is not None and step.upper <= step.lower:
                raise EngineConfigError(f"step upper bound must exceed its lower bound: {step!r}")
        for previous, step in itertools.pairwise(ordered):
            if previous.upper is None or step.lower is None or step.lower < previous.upper:
                raise EngineConfigError(f"steps overlap: {previous!r} and {step!r}")
        if self.adjustment_type is AdjustmentType.EXACT_CAPACITY and any(
            s.adjustment < 0 or s.adjustment != int(s.adjustment) for s in self.steps
        ):
            raise EngineConfigError("exact capacity adjustments must be non-negative integers")
        try:
            query = WindowQuery(self.metric, self.statistic, self.window_s)
        except ValueError as error:
            raise EngineConfigError(str(error)) from error
        object.__setattr__(self, "_query", query)
        if not self.name:
            object.__setattr__(self, "name", f"step({self.metric})")

    @property
    def query(self) -> WindowQuery:
        """The window this policy reads."""
        query: WindowQuery = getattr(self, "_query")  # noqa: B009
        return query

    def queries(self) -> tuple[WindowQuery, ...]:
        return (self.query,)

    def adjust(self, ready: int, current: int, adjustment: float) -> int:
        """Return the capacity after ``adjustment`` (see the module docstring for the base)."""
        if self.adjustment_type is AdjustmentType.EXACT_CAPACITY:
            return int(adjustment)
        base = ready if adjustment > 0 else current
        if self.adjustment_type is AdjustmentType.CHANGE_IN_CAPACITY:
            change = int(adjustment)
        else:
            change = percent_change(base, adjustment)
            floor = self.min_adjustment_magnitude
            if floor is not None and 0 < abs(change) < floor:
                change = floor if change > 0 else -floor
        desired = max(0, base + change)
        return max(desired, current) if adjustment > 0 else min(desired, current)

    def recommend(self, inputs: PolicyInputs, state: Any) -> tuple[Recommendation, Any]:
        observation = inputs.observe(self.query)
        capacity = inputs.capacity
        value = observation.value
        if value is None:
            reason = f"no fresh {self.query.describe()} data"
            return Recommendation(self.name, capacity.current, False, reason, False), state
        step = next((s for s in self.steps if s.contains(value)), None)
        if step is None:
            desired = capacity.current
            reason = f"{self.query.describe()} = {value:.4g} matches no step; keep {desired}"
        else:
            desired = self.adjust(capacity.ready, capacity.current, step.adjustment)
            reason = (
                f"{self.query.describe()} = {value:.4g} in [{step.lower}, {step.upper}): "
                f"{self.adjustment_type.value} {step.adjustment:g} -> {desired} "
                f"(ready {capacity.ready}, current {capacity.current})"
            )
        recommendation = Recommendation(
            self.name, desired, True, reason, scale_down_allowed=observation.complete
        )
        return recommendation, state

"""Target tracking with the Kubernetes HPA rule: ``desired = ceil(current x observed / target)``.

``observed / target`` is the usage ratio; the tolerance band around 1.0 is applied by
``Behavior`` so that every policy that reports a usage ratio shares it. For a ``SUM`` metric the
observation is the endpoint total, so ``current x observed_per_instance`` equals the total and
``desired = ceil(total / target)``, which stays correct when no instance is ready yet.

For a ``MEAN`` metric only reporting instances have a value. As in the HPA, instances without a
value count as idle (0) when deciding a scale-up and as exactly at target when deciding a
scale-down, so partial data can only make the policy more careful.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from warmstart.engine.aggregate import Aggregation, Observation, WindowQuery
from warmstart.engine.errors import EngineConfigError
from warmstart.engine.policy._util import ceil_count
from warmstart.engine.policy.base import Policy, PolicyInputs, Recommendation
from warmstart.engine.window import Statistic


@dataclass(frozen=True)
class TargetTracking(Policy):
    """Keep ``metric`` at ``target`` per instance.

    ``target`` is in the metric's own unit per instance (concurrent requests, queued requests,
    KV-cache fraction, tokens per second, requests per second). The metric is read as
    ``statistic`` over the last ``window_s`` seconds (``half_life_s`` seconds for EWMA).
    """

    metric: str
    target: float
    statistic: Statistic = Statistic.MEAN
    window_s: float = 60.0
    half_life_s: float | None = None
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.target > 0:
            raise EngineConfigError(f"target must be positive, got {self.target!r}")
        try:
            query = WindowQuery(self.metric, self.statistic, self.window_s, self.half_life_s)
        except ValueError as error:
            raise EngineConfigError(str(error)) from error
        object.__setattr__(self, "_query", query)
        # Every reason names the query, so its label is formatted once here.
        object.__setattr__(self, "_description", query.describe())
        if not self.name:
            object.__setattr__(self, "name", f"target_tracking({self.metric})")

    @property
    def query(self) -> WindowQuery:
        """The window this policy reads."""
        query: WindowQuery = getattr(self, "_query")  # noqa: B009
        return query

    def queries(self) -> tuple[WindowQuery, ...]:
        return (self.query,)

    def recommend(self, inputs: PolicyInputs, state: Any) -> tuple[Recommendation, Any]:
        observation = inputs.observe(self.query)
        return self.recommend_observed(observation, inputs.capacity.current), state

    def recommend_observed(self, observation: Observation, current: int) -> Recommendation:
        """Return the recommendation for ``observation`` of ``query`` at capacity ``current``.

        ``recommend`` reads both from its inputs. The policy is stateless and reads nothing
        else, so the engine calls this directly and skips building ``PolicyInputs``.
        """
        total = observation.total
        description: str = getattr(self, "_description")  # noqa: B009
        if total is None:
            reason = f"no fresh {description} data"
            if observation.stale:
                reason += f" ({observation.stale} series stale or missing)"
            return Recommendation(self.name, current, False, reason, False)

        # Load used for each direction: see the module docstring for the MEAN rule.
        load_up = total
        load_down = total
        if observation.aggregation is Aggregation.MEAN:
            missing = max(0, current - observation.reporting)
            load_down = total + self.target * missing

        desired_up = ceil_count(load_up / self.target)
        desired_down = desired_up if load_down == load_up else ceil_count(load_down / self.target)
        if desired_up > current:
            desired, load = desired_up, load_up
        elif desired_down < current:
            desired, load = desired_down, load_down
        else:
            desired, load = current, total

        ratio = load / (current * self.target) if current > 0 else None
        reason = (
            f"{description}, {observation.aggregation.value} over "
            f"{observation.reporting} instance(s) = {observation.value:.4g}; load {load:.4g} "
            f"vs target {self.target:g} per instance -> {desired} (current {current})"
        )
        if observation.stale:
            reason += f"; {observation.stale} series stale or missing, scale-down blocked"
        # Positional, in field order: policy, desired, valid, reason, scale_down_allowed,
        # floor_only, usage_ratio. The engine builds one per endpoint per evaluation.
        return Recommendation(self.name, desired, True, reason, observation.complete, False, ratio)

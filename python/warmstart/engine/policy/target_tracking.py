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

import math
from dataclasses import dataclass, field
from typing import Any

from warmstart.engine.aggregate import Aggregation, Observation, WindowQuery
from warmstart.engine.errors import EngineConfigError
from warmstart.engine.policy._util import ceil_count
from warmstart.engine.policy.base import (
    Policy,
    PolicyInputs,
    Recommendation,
    build_recommendation,
)
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
        if not (math.isfinite(self.target) and self.target > 0):
            raise EngineConfigError(f"target must be a positive finite number, got {self.target!r}")
        try:
            query = WindowQuery(self.metric, self.statistic, self.window_s, self.half_life_s)
        except ValueError as error:
            raise EngineConfigError(str(error)) from error
        object.__setattr__(self, "_query", query)
        # Every reason names the query and the target, so their text is formatted once here.
        description = query.describe()
        object.__setattr__(self, "_description", description)
        object.__setattr__(
            self,
            "_reason_heads",
            {a: f"{description}, {a.value} over " for a in Aggregation},
        )
        object.__setattr__(self, "_target_text", f"{self.target:g}")
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
        value = observation.value
        if total is None or value is None:
            return self.no_data(observation.stale, current)

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
        return self.with_data(
            value,
            observation.reporting,
            observation.stale,
            observation.aggregation,
            load,
            desired,
            current,
            ratio,
        )

    # ``no_data`` and ``with_data`` build the recommendation from numbers already computed.
    # ``recommend_observed`` and the engine's batch path (warmstart.engine.batch) share them,
    # so both give equal reasons.

    def no_data(self, stale: int, current: int) -> Recommendation:
        """Return the invalid recommendation for a window without fresh data."""
        description: str = getattr(self, "_description")  # noqa: B009
        reason = f"no fresh {description} data"
        if stale:
            reason += f" ({stale} series stale or missing)"
        return build_recommendation(self.name, current, False, reason, False, False, None)

    def with_data(
        self,
        value: float,
        reporting: int,
        stale: int,
        aggregation: Aggregation,
        load: float,
        desired: int,
        current: int,
        ratio: float | None,
    ) -> Recommendation:
        """Return the valid recommendation for an observed ``value`` and the ``desired`` it gives.

        ``load`` is the total load that set ``desired`` and ``ratio`` the usage ratio.
        """
        heads: dict[Aggregation, str] = getattr(self, "_reason_heads")  # noqa: B009
        target_text: str = getattr(self, "_target_text")  # noqa: B009
        value_text = f"{value:.4g}"
        # Equal nonzero floats format alike; zeros differ in sign, so they are formatted apart.
        load_text = value_text if load == value and value else f"{load:.4g}"
        reason = (
            f"{heads[aggregation]}{reporting} instance(s) = {value_text}; load {load_text} "
            f"vs target {target_text} per instance -> {desired} (current {current})"
        )
        if stale:
            reason += f"; {stale} series stale or missing, scale-down blocked"
        return build_recommendation(self.name, desired, True, reason, stale == 0, False, ratio)

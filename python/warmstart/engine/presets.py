"""Baseline presets that reproduce the documented defaults of other autoscalers.

``preset(name, ...)`` returns an ``EndpointSpec``. The presets are baselines for comparison,
so each one states where it follows its source and where this engine's model differs.

- ``hpa``: Kubernetes HorizontalPodAutoscaler (autoscaling/v2 defaults): a 15 s loop, 10 %
  tolerance, a 300 s scale-down stabilization window, scale-up by at most +4 pods or +100 %
  per 15 s (the larger), scale-down by at most 100 % per 15 s.
- ``knative``: Knative Pod Autoscaler defaults: 60 s stable window, 6 s panic window, panic at
  2.0x, a 2 s tick, scale-up rate 1000x and scale-down rate 2x, scale to zero allowed.
- ``sagemaker``: Application Auto Scaling target tracking on a 60 s metric (for example
  SageMakerVariantInvocationsPerInstance), evaluated every 60 s, 300 s scale-in cooldown.
- ``sagemaker-hires``: the same with 10 s metrics (ConcurrentRequestsPerModel), evaluated
  every 10 s; SageMaker documents that it scales in at the same rate as standard metrics, so
  the scale-in side is unchanged.

For both SageMaker presets the 300 s scale-out cooldown is not a blocking cooldown here:
Application Auto Scaling counts the capacity added by the scale-out in progress toward the next
one, and this engine does the same by counting pending instances in the current capacity.
NOTE: the CloudWatch alarm datapoint counts behind target tracking are not modeled, so these
presets react one evaluation after the metric crosses the target.
"""

from __future__ import annotations

from warmstart.engine.aggregate import Aggregation
from warmstart.engine.behavior import (
    HPA_SCALE_DOWN,
    HPA_SCALE_UP,
    Behavior,
    ScalingRules,
    SelectPolicy,
)
from warmstart.engine.errors import EngineConfigError
from warmstart.engine.policy.burst import Burst
from warmstart.engine.policy.target_tracking import TargetTracking
from warmstart.engine.spec import EndpointSpec, MetricSpec

PRESETS = ("hpa", "knative", "sagemaker", "sagemaker-hires")

HPA_BEHAVIOR = Behavior(scale_up=HPA_SCALE_UP, scale_down=HPA_SCALE_DOWN, tolerance=0.1)

KNATIVE_BEHAVIOR = Behavior(
    scale_up=ScalingRules(0.0, (), SelectPolicy.MAX),
    scale_down=ScalingRules(0.0, (), SelectPolicy.MAX),
    tolerance=0.0,
    scale_to_zero_after_s=30.0,
)

SAGEMAKER_BEHAVIOR = Behavior(
    scale_up=ScalingRules(0.0, (), SelectPolicy.MAX, cooldown_s=0.0),
    scale_down=ScalingRules(0.0, (), SelectPolicy.MAX, cooldown_s=300.0),
    tolerance=0.0,
)


def preset(
    name: str,
    *,
    endpoint: str,
    metric: str,
    target: float,
    min_capacity: int | None = None,
    max_capacity: int = 100,
    aggregation: Aggregation = Aggregation.SUM,
    time_to_ready_s: float | None = None,
    instance_timeout_s: float | None = None,
) -> EndpointSpec:
    """Return an endpoint spec for preset ``name`` (one of ``PRESETS``).

    ``target`` is the per-instance target in the metric's unit (for ``knative``, the
    concurrency target already multiplied by the target utilization, such as 100 x 0.7 = 70).
    ``min_capacity`` defaults to 0 for ``knative`` and 1 otherwise. ``instance_timeout_s`` is
    ``EndpointSpec.instance_timeout_s``. Raise
    ``EngineConfigError`` for an unknown name.
    """
    metrics = (MetricSpec(metric, aggregation=aggregation),)
    if name == "hpa":
        return EndpointSpec(
            endpoint,
            metrics,
            (TargetTracking(metric, target, window_s=15.0),),
            min_capacity=1 if min_capacity is None else min_capacity,
            max_capacity=max_capacity,
            behavior=HPA_BEHAVIOR,
            interval_s=15.0,
            time_to_ready_s=time_to_ready_s,
            instance_timeout_s=instance_timeout_s,
        )
    if name == "knative":
        return EndpointSpec(
            endpoint,
            metrics,
            (Burst(metric, target),),
            min_capacity=0 if min_capacity is None else min_capacity,
            max_capacity=max_capacity,
            behavior=KNATIVE_BEHAVIOR,
            interval_s=2.0,
            time_to_ready_s=time_to_ready_s,
            instance_timeout_s=instance_timeout_s,
        )
    if name in ("sagemaker", "sagemaker-hires"):
        period_s = 60.0 if name == "sagemaker" else 10.0
        return EndpointSpec(
            endpoint,
            (MetricSpec(metric, aggregation=aggregation, stale_after_s=2 * period_s),),
            (TargetTracking(metric, target, window_s=period_s),),
            min_capacity=1 if min_capacity is None else min_capacity,
            max_capacity=max_capacity,
            behavior=SAGEMAKER_BEHAVIOR,
            interval_s=period_s,
            time_to_ready_s=time_to_ready_s,
            instance_timeout_s=instance_timeout_s,
        )
    raise EngineConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


__all__ = ["HPA_BEHAVIOR", "KNATIVE_BEHAVIOR", "PRESETS", "SAGEMAKER_BEHAVIOR", "preset"]

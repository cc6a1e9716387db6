"""The scaling configurations a replay compares, as engine endpoint specs.

``hpa``, ``knative``, ``sagemaker`` and ``sagemaker-hires`` are the engine presets (see
``warmstart.engine.presets`` for their values and sources). ``warmstart`` is this project's
configuration for slow-starting instances: 1 s evaluations of a 10 s mean, Knative-style
panic on a 6 s window, and a predictive floor that sizes for the load one time-to-ready ahead
from the trend of 60 s means over 15 minutes, with the HPA's 300 s scale-down stabilization.
Every configuration tracks the same per-instance concurrency target, so the comparison is
between reaction and start-up, not targets.
"""

from __future__ import annotations

import dataclasses
import math

from warmstart.engine import (
    PRESETS,
    Behavior,
    Burst,
    EndpointSpec,
    MetricSpec,
    Predictive,
    ScalingRules,
    SelectPolicy,
    TargetTracking,
    preset,
)
from warmstart.engine.behavior import HPA_SCALE_DOWN
from warmstart.replay.fleet import METRIC

__all__ = ["POLICIES", "initial_capacity", "policy_spec"]

POLICIES = (*PRESETS, "warmstart")

ENDPOINT = "replay"

WARMSTART_BEHAVIOR = Behavior(
    scale_up=ScalingRules(0.0, (), SelectPolicy.MAX),
    scale_down=HPA_SCALE_DOWN,
    tolerance=0.1,
)


def policy_spec(
    name: str,
    *,
    target: float,
    time_to_ready_s: float,
    initial_capacity: int,
    max_capacity: int = 100,
    metric_period_s: float = 1.0,
) -> EndpointSpec:
    """Return the endpoint spec of configuration ``name`` (one of ``POLICIES``).

    ``target`` is the per-instance concurrency target, ``time_to_ready_s`` the expected seconds
    from launch to ready, and ``initial_capacity`` the ready instances at the start.

    A series stays fresh for at least two metric periods plus a second, so a coarse metric
    (``metric_period_s`` of 10 or 60 s) is not stale between its reports.
    Raise ``ValueError`` for an unknown name.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    if name == "warmstart":
        spec = EndpointSpec(
            ENDPOINT,
            (MetricSpec(METRIC, stale_after_s=10.0),),
            (
                TargetTracking(METRIC, target, window_s=10.0),
                Burst(METRIC, target),
                Predictive(METRIC, target, window_s=60.0, step_s=60.0, trend_window_s=900.0),
            ),
            min_capacity=1,
            max_capacity=max_capacity,
            behavior=WARMSTART_BEHAVIOR,
            interval_s=1.0,
            time_to_ready_s=time_to_ready_s,
        )
    else:
        spec = preset(
            name,
            endpoint=ENDPOINT,
            metric=METRIC,
            target=target,
            max_capacity=max_capacity,
            time_to_ready_s=time_to_ready_s,
        )
    start = min(max(initial_capacity, spec.min_capacity), spec.max_capacity)
    fresh_s = 2 * metric_period_s + 1.0
    metrics = tuple(
        dataclasses.replace(m, stale_after_s=max(m.stale_after_s, fresh_s)) for m in spec.metrics
    )
    return dataclasses.replace(
        spec,
        metrics=metrics,
        initial_capacity=start,
    )


def initial_capacity(mean_concurrency: float, target: float) -> int:
    """Return the instances that hold ``mean_concurrency`` at ``target`` each (at least 1)."""
    return max(1, math.ceil(mean_concurrency / target))

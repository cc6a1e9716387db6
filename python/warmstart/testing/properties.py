"""Reusable property checks for endpoint configurations.

Each check replays a stream through a fresh engine on a fake clock and raises
``PropertyViolation`` (an ``AssertionError``) with the offending decision's explanation when
the property fails, so it works as a plain assertion inside a hypothesis test.
"""

from __future__ import annotations

import dataclasses

from warmstart.engine.decision import Decision
from warmstart.engine.policy.target_tracking import TargetTracking
from warmstart.engine.spec import EndpointSpec
from warmstart.testing.replay import Delivery, MetricStream, replay_spec


class PropertyViolation(AssertionError):
    """A scaling property does not hold; the message explains the decision that broke it."""


def check_within_bounds(
    spec: EndpointSpec, metric: str, stream: MetricStream, until_s: float
) -> list[Decision]:
    """Check that every decision stays within ``[min_capacity, max_capacity]``."""
    decisions = replay_spec(spec, metric, stream, until_s, _start(stream))
    for decision in decisions:
        if not spec.min_capacity <= decision.desired <= spec.max_capacity:
            raise PropertyViolation(
                f"desired {decision.desired} outside [{spec.min_capacity}, "
                f"{spec.max_capacity}]:\n{decision.explain()}"
            )
    return decisions


def check_no_scale_down_on_missing_data(
    spec: EndpointSpec, metric: str, stream: MetricStream, gap_start_s: float, until_s: float
) -> list[Decision]:
    """Cut ``stream`` at ``gap_start_s`` and check that no later decision scales down.

    Every delivery from ``gap_start_s`` on is dropped, so after that the engine sees only
    stale data, which must never lower capacity.
    """
    cut = tuple(d for d in stream if d.received_s < gap_start_s)
    decisions = replay_spec(spec, metric, cut, until_s, _start(stream))
    for decision in decisions:
        if decision.at >= gap_start_s and decision.desired < decision.current:
            raise PropertyViolation(
                f"scaled down at {decision.at}s, after data stopped at {gap_start_s}s:\n"
                f"{decision.explain()}"
            )
    return decisions


def check_monotone_in_load(
    spec: EndpointSpec, metric: str, low: float, high: float, duration_s: float = 120.0
) -> tuple[int, int]:
    """Check that a constant ``high`` load never gets less capacity than a constant ``low`` load.

    Both loads are split evenly over two reporting instances every second for ``duration_s``
    seconds; the final desired capacities are compared and returned.
    """
    if high < low:
        low, high = high, low
    finals = []
    for load in (low, high):
        stream = constant_stream(load, duration_s)
        decisions = replay_spec(spec, metric, stream, 1000.0 + duration_s, 1000.0)
        finals.append(decisions[-1].desired if decisions else spec.start_capacity)
    if finals[1] < finals[0]:
        raise PropertyViolation(
            f"load {high:g} got {finals[1]} instances but load {low:g} got {finals[0]}"
        )
    return finals[0], finals[1]


def check_settles_under_constant_load(
    spec: EndpointSpec, metric: str, load: float, duration_s: float = 900.0
) -> int:
    """Check that a constant load leads to one constant capacity (no oscillation).

    After the first half of ``duration_s`` seconds every decision must keep the same capacity;
    return that capacity.
    """
    stream = constant_stream(load, duration_s)
    decisions = replay_spec(spec, metric, stream, 1000.0 + duration_s, 1000.0)
    late = [d for d in decisions if d.at >= 1000.0 + duration_s / 2]
    values = {d.desired for d in late}
    if len(values) > 1 or any(d.changed for d in late):
        changed = next((d for d in late if d.changed), late[-1])
        raise PropertyViolation(
            f"capacity still changes under constant load {load:g}: {sorted(values)}\n"
            f"{changed.explain()}"
        )
    return late[-1].desired if late else spec.start_capacity


def constant_stream(load: float, duration_s: float, instances: int = 2) -> MetricStream:
    """Return a stream of ``load`` split over ``instances``, one sample each per second."""
    deliveries = []
    for second in range(int(duration_s)):
        t = 1000.0 + second
        for instance in range(instances):
            deliveries.append(Delivery(t, f"i{instance}", t, load / instances))
    return tuple(deliveries)


def tracked_policies(spec: EndpointSpec) -> list[TargetTracking]:
    """Return the endpoint's target tracking policies."""
    return [p for p in spec.policies if isinstance(p, TargetTracking)]


def without_stabilization(spec: EndpointSpec) -> EndpointSpec:
    """Return ``spec`` with a behavior that has no stabilization windows, rate limits or holds.

    Useful to check a policy's own output through the engine.
    """
    behavior = dataclasses.replace(
        spec.behavior,
        scale_up=dataclasses.replace(
            spec.behavior.scale_up, stabilization_window_s=0.0, policies=()
        ),
        scale_down=dataclasses.replace(
            spec.behavior.scale_down, stabilization_window_s=0.0, policies=()
        ),
        restart_hold_s=0.0,
    )
    return dataclasses.replace(spec, behavior=behavior)


def _start(stream: MetricStream) -> float:
    return min((d.received_s for d in stream), default=0.0)

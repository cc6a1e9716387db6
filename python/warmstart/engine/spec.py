"""Endpoint and metric specifications: what the engine scales and from which metrics."""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass, field

from warmstart.engine.aggregate import Aggregation
from warmstart.engine.behavior import Behavior
from warmstart.engine.errors import EngineConfigError
from warmstart.engine.policy.base import Policy

# The default instance timeout in multiples of the longest ``stale_after_s``. Six stale periods
# (60 s at the default 10 s) are meant to outlast garbage-collection pauses and short network
# outages. A live instance that still times out loses little, because it keeps its capacity and
# reports again with its next sample. A crashed instance then blocks scale-down for a fifth of
# the default 300 s scale-down stabilization window, instead of until a ``gone`` event that may
# never come.
DEFAULT_TIMEOUT_STALE_PERIODS = 6


class MetricKind(enum.Enum):
    """``COUNT`` values (requests, tokens, queue length) must be non-negative; ``GAUGE`` values
    may be any finite number."""

    COUNT = "count"
    GAUGE = "gauge"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric an endpoint's instances report.

    ``stale_after_s``: a series whose newest sample is older than this many seconds is stale;
    stale data never drives a scale-down. ``per_instance``: every ready instance is expected to
    report this metric, so a ready instance without a fresh series counts as missing data. Set
    it to False for endpoint-level metrics such as a load balancer's queue length.
    """

    name: str
    aggregation: Aggregation = Aggregation.SUM
    kind: MetricKind = MetricKind.COUNT
    stale_after_s: float = 10.0
    per_instance: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            raise EngineConfigError("metric name must not be empty")
        if not (math.isfinite(self.stale_after_s) and self.stale_after_s > 0):
            raise EngineConfigError(
                f"stale_after_s of metric {self.name!r} must be positive seconds, "
                f"got {self.stale_after_s!r}"
            )


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """An endpoint the engine scales: its bounds, metrics, policies and behavior.

    ``interval_s`` is the time in seconds between evaluations; ``bucket_s`` the width in seconds
    of its window buckets. ``initial_capacity`` is the capacity assumed before any decision or
    instance event (``min_capacity`` when None). ``time_to_ready_s`` seeds the expected seconds
    from launch to ready until the engine measures it from instance events.

    ``instance_timeout_s`` is how long, in seconds, an instance may go without a sample on any
    of its series and without an instance event before it times out: its series are dropped,
    so they stop counting as stale, and while it is ready it no longer counts as missing data.
    It still counts toward capacity until its ``gone`` event, because only instance events
    change capacity. Launched instances that are not ready yet never time out, because loading
    a model can take minutes without a sample. None (the default) means
    ``DEFAULT_TIMEOUT_STALE_PERIODS`` times the longest ``stale_after_s`` of the endpoint's
    metrics, 60 s with the default 10 s, and ``math.inf`` turns the timeout off. See
    ``effective_instance_timeout_s``.
    """

    name: str
    metrics: tuple[MetricSpec, ...]
    policies: tuple[Policy, ...]
    min_capacity: int = 1
    max_capacity: int = 100
    behavior: Behavior = field(default_factory=Behavior)
    interval_s: float = 1.0
    bucket_s: float = 1.0
    initial_capacity: int | None = None
    time_to_ready_s: float | None = None
    instance_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise EngineConfigError("endpoint name must not be empty")
        for attribute in ("min_capacity", "max_capacity", "initial_capacity"):
            value = getattr(self, attribute)
            if value is None and attribute == "initial_capacity":
                continue
            # A float bound would make decisions floats; numpy integers are converted.
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise EngineConfigError(
                    f"endpoint {self.name!r}: {attribute} must be an integer, got {value!r}"
                )
            object.__setattr__(self, attribute, int(value))
        if not 0 <= self.min_capacity <= self.max_capacity:
            raise EngineConfigError(
                f"endpoint {self.name!r}: need 0 <= min_capacity <= max_capacity, "
                f"got {self.min_capacity} and {self.max_capacity}"
            )
        for attribute in ("interval_s", "bucket_s"):
            value = getattr(self, attribute)
            if not (math.isfinite(value) and value > 0):
                raise EngineConfigError(
                    f"endpoint {self.name!r}: {attribute} must be positive seconds, got {value!r}"
                )
        if self.initial_capacity is not None and not (
            self.min_capacity <= self.initial_capacity <= self.max_capacity
        ):
            raise EngineConfigError(
                f"endpoint {self.name!r}: initial_capacity {self.initial_capacity} is outside "
                f"[{self.min_capacity}, {self.max_capacity}]"
            )
        if self.time_to_ready_s is not None and not (
            math.isfinite(self.time_to_ready_s) and self.time_to_ready_s >= 0
        ):
            raise EngineConfigError(
                f"endpoint {self.name!r}: time_to_ready_s must be finite non-negative seconds, "
                f"got {self.time_to_ready_s!r}"
            )
        timeout = self.instance_timeout_s
        if timeout is not None and not timeout > 0:
            raise EngineConfigError(
                f"endpoint {self.name!r}: instance_timeout_s must be positive seconds, or inf "
                f"to never time out silent instances, got {timeout!r}"
            )
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise EngineConfigError(f"endpoint {self.name!r}: duplicate metric names in {names}")
        if not self.policies:
            raise EngineConfigError(f"endpoint {self.name!r}: at least one policy is required")
        policy_names = [p.name for p in self.policies]
        if len(set(policy_names)) != len(policy_names):
            raise EngineConfigError(
                f"endpoint {self.name!r}: duplicate policy names {policy_names}; set name="
            )
        for policy in self.policies:
            for query in policy.queries():
                if query.metric not in names:
                    raise EngineConfigError(
                        f"endpoint {self.name!r}: policy {policy.name!r} reads metric "
                        f"{query.metric!r}, which is not in metrics {names}"
                    )

    def metric(self, name: str) -> MetricSpec:
        """Return the metric spec called ``name``; raise KeyError if none."""
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)

    @property
    def longest_window_s(self) -> float:
        """Longest window any policy of this endpoint reads, in seconds."""
        return max(policy.longest_window_s for policy in self.policies)

    @property
    def effective_instance_timeout_s(self) -> float:
        """Seconds of silence after which an instance times out (inf: never)."""
        if self.instance_timeout_s is not None:
            return float(self.instance_timeout_s)
        longest_stale_s = max((m.stale_after_s for m in self.metrics), default=10.0)
        return DEFAULT_TIMEOUT_STALE_PERIODS * longest_stale_s

    @property
    def start_capacity(self) -> int:
        """Capacity assumed before the first decision."""
        return self.min_capacity if self.initial_capacity is None else self.initial_capacity

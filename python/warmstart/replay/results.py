"""The outcome of a replay run, and the summary row a report prints for it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["RunResult", "ScaleOut", "Summary", "Timeline", "summarize"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ScaleOut:
    """One capacity increase.

    ``need_at_s``: when the endpoint's concurrency last rose above target x active capacity
    before the decision, or None when it was not above it at the decision (a forecast, or a
    return from zero). ``ready_at_s``: when the last instance the decision launched became
    ready, or None when one was cancelled or never became ready. Times in seconds.
    """

    decided_at_s: float
    added: int
    need_at_s: float | None
    ready_at_s: float | None

    @property
    def detect_s(self) -> float | None:
        """Seconds from the need to the decision."""
        return None if self.need_at_s is None else self.decided_at_s - self.need_at_s

    @property
    def time_to_capacity_s(self) -> float | None:
        """Seconds from the decision until the last instance it launched was ready."""
        return None if self.ready_at_s is None else self.ready_at_s - self.decided_at_s


@dataclass(frozen=True, eq=False)
class Timeline:
    """Per simulation step: time (s), demand (requests in flight or queued), desired capacity,
    ready and starting instances, queued requests, and standby nodes."""

    time_s: FloatArray
    demand: IntArray
    desired: IntArray
    ready: IntArray
    starting: IntArray
    queued: IntArray
    standby: IntArray


@dataclass(frozen=True, eq=False)
class RunResult:
    """The outcome of one replay run.

    Per request: ``ttft_s`` (queueing plus prefill) and ``latency_s`` (queueing plus service),
    both ``inf`` for requests unfinished when the run ended. ``instance_seconds`` counts every
    serving instance from launch to gone and ``standby_seconds`` every standby node, both
    clipped to the workload's span. ``stages_s`` contains the mean seconds of each scale-out stage
    over the run's launches. ``changes`` lists ``(time_s, current, desired, reason)`` for each
    decision that changed capacity.
    """

    policy: str
    mode: str
    workload: str
    objective_ttft_s: float
    ttft_s: FloatArray
    latency_s: FloatArray
    service_s: FloatArray
    instance_seconds: float
    standby_seconds: float
    scale_outs: tuple[ScaleOut, ...]
    changes: tuple[tuple[float, int, int, str], ...]
    stages_s: dict[str, float]
    launches: int
    timeline: Timeline
    wall_s: float

    @property
    def requests(self) -> int:
        """Requests in the workload."""
        return int(self.ttft_s.shape[0])

    @property
    def over_objective(self) -> int:
        """Requests whose time to first token exceeded the objective, unfinished ones included."""
        return int(np.count_nonzero(self.ttft_s > self.objective_ttft_s))

    @property
    def unfinished(self) -> int:
        """Requests not finished when the run ended."""
        return int(np.count_nonzero(~np.isfinite(self.latency_s)))

    @property
    def max_instances(self) -> int:
        """Most instances alive (ready or starting) at one step."""
        timeline = self.timeline
        return int(np.max(timeline.ready + timeline.starting, initial=0))


@dataclass(frozen=True, slots=True)
class Summary:
    """One report row: counts, percentiles in seconds, and costs in instance-seconds."""

    policy: str
    mode: str
    requests: int
    over_objective: int
    over_objective_pct: float
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    ttft_p99_s: float
    detect_median_s: float | None
    capacity_median_s: float | None
    capacity_max_s: float | None
    scale_outs: int
    scale_events: int
    instance_seconds: float
    standby_seconds: float
    unfinished: int


def _percentiles(values: FloatArray, quantiles: list[float]) -> list[float]:
    """Return linearly interpolated percentiles in which ``inf`` values sort last.

    ``np.percentile`` interpolates next to an ``inf`` to nan (``inf * 0`` or ``inf - inf``).
    Here a percentile that lands exactly on a value is that value, and one interpolated
    towards an ``inf`` is ``inf``.
    """
    if values.size == 0:
        return [0.0] * len(quantiles)
    if np.all(np.isfinite(values)):
        return [float(v) for v in np.percentile(values, quantiles)]
    ordered = np.sort(values)
    position = np.asarray(quantiles) / 100.0 * (ordered.size - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, ordered.size - 1)
    weight = position - below
    low, high = ordered[below], ordered[above]
    reaches_inf = np.isinf(low) | (np.isinf(high) & (weight > 0))
    with np.errstate(invalid="ignore"):
        interpolated = np.where(weight > 0, low + (high - low) * weight, low)
    return [float(v) for v in np.where(reaches_inf, np.inf, interpolated)]


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def summarize(result: RunResult) -> Summary:
    """Return the report row of ``result``. Percentiles count unfinished requests as ``inf``."""
    p50, p95, p99 = _percentiles(result.latency_s, [50, 95, 99])
    detects = [s.detect_s for s in result.scale_outs if s.detect_s is not None]
    capacity = [s.time_to_capacity_s for s in result.scale_outs if s.time_to_capacity_s is not None]
    return Summary(
        policy=result.policy,
        mode=result.mode,
        requests=result.requests,
        over_objective=result.over_objective,
        over_objective_pct=100.0 * result.over_objective / max(result.requests, 1),
        latency_p50_s=p50,
        latency_p95_s=p95,
        latency_p99_s=p99,
        ttft_p99_s=_percentiles(result.ttft_s, [99])[0],
        detect_median_s=_median(detects),
        capacity_median_s=_median(capacity),
        capacity_max_s=max(capacity) if capacity else None,
        scale_outs=len(result.scale_outs),
        scale_events=len(result.changes),
        instance_seconds=result.instance_seconds,
        standby_seconds=result.standby_seconds,
        unfinished=result.unfinished,
    )

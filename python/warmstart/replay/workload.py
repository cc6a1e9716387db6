"""Workloads: request arrivals with token counts or service times, and the built-in one.

A ``Workload`` contains one row per request, sorted by arrival: arrival time in seconds from the
start, and either prompt and generated token counts (LLM traces) or a service time in seconds
(traces that record durations). ``builtin_workload`` generates a one-hour chat workload from a
seed, so ``warmstart replay`` runs with no trace at hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "BUILTIN_DURATION_S",
    "Workload",
    "WorkloadError",
    "builtin_workload",
    "workload_from_rate",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

BUILTIN_DURATION_S = 3600.0


class WorkloadError(ValueError):
    """A trace could not be read or its columns are inconsistent."""


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests of one endpoint, sorted by ``arrival_s`` (seconds from the start).

    ``input_tokens`` and ``output_tokens`` are set together for LLM traces; ``service_s``
    (seconds) is set instead for traces with measured durations. ``duration_s`` is the span
    the trace covers, at least the last arrival.
    """

    name: str
    arrival_s: FloatArray
    duration_s: float
    input_tokens: IntArray | None = None
    output_tokens: IntArray | None = None
    service_s: FloatArray | None = None

    def __post_init__(self) -> None:
        n = self.arrival_s.shape[0]
        if self.arrival_s.ndim != 1:
            raise WorkloadError(f"{self.name}: arrival_s must be one-dimensional")
        if n and not (np.all(np.isfinite(self.arrival_s)) and self.arrival_s[0] >= 0):
            raise WorkloadError(f"{self.name}: arrival times must be finite and non-negative")
        if n > 1 and np.any(np.diff(self.arrival_s) < 0):
            raise WorkloadError(f"{self.name}: arrival times must be sorted")
        tokens = (self.input_tokens is None, self.output_tokens is None)
        if tokens[0] != tokens[1]:
            raise WorkloadError(f"{self.name}: give both token columns or neither")
        if tokens[0] == (self.service_s is None):
            raise WorkloadError(f"{self.name}: give token counts or service times, not both")
        for column in (self.input_tokens, self.output_tokens, self.service_s):
            if column is not None and column.shape != (n,):
                raise WorkloadError(f"{self.name}: every column needs {n} rows")
            if column is not None and np.any(column < 0):
                raise WorkloadError(f"{self.name}: token counts and service times must be >= 0")
        if not (
            math.isfinite(self.duration_s) and self.duration_s >= (self.arrival_s[-1] if n else 0)
        ):
            raise WorkloadError(f"{self.name}: duration_s must cover the last arrival")

    @property
    def requests(self) -> int:
        """Number of requests."""
        return int(self.arrival_s.shape[0])

    def head(self, duration_s: float) -> Workload:
        """Return the requests arriving in the first ``duration_s`` seconds."""
        end = int(np.searchsorted(self.arrival_s, duration_s, side="left"))
        return Workload(
            name=self.name,
            arrival_s=self.arrival_s[:end],
            duration_s=min(self.duration_s, duration_s),
            input_tokens=None if self.input_tokens is None else self.input_tokens[:end],
            output_tokens=None if self.output_tokens is None else self.output_tokens[:end],
            service_s=None if self.service_s is None else self.service_s[:end],
        )


def builtin_workload(seed: int = 0, duration_s: float = BUILTIN_DURATION_S) -> Workload:
    """Generate a chat workload: Poisson arrivals with a morning ramp and a burst.

    The rate starts at 2 requests per second, ramps to 5 between minutes 10 and 25, triples to
    15 for minutes 35 to 40 (the burst a scale-out must absorb), and falls back to 3. Prompt
    and generated token counts are lognormal with medians of 600 and 150 tokens. The same seed
    gives the same workload.
    """
    knots_s = np.array([0, 600, 1500, 2100, 2110, 2400, 2410, 3600], dtype=np.float64)
    rates = np.array([2.0, 2.0, 5.0, 5.0, 15.0, 15.0, 3.0, 3.0])
    knots_s = knots_s * (duration_s / BUILTIN_DURATION_S)
    return workload_from_rate(
        "builtin-chat", knots_s, rates, duration_s, seed=seed, interpolate=True
    )


def workload_from_rate(
    name: str,
    times_s: npt.ArrayLike,
    rates: npt.ArrayLike,
    duration_s: float,
    *,
    seed: int = 0,
    interpolate: bool = False,
) -> Workload:
    """Generate Poisson arrivals whose rate (requests per second) follows ``rates``.

    The rate is ``rates[i]`` from ``times_s[i]`` until the next time (a step function), or a
    straight line between points when ``interpolate`` is set. Token counts are lognormal with
    medians of 600 prompt and 150 generated tokens, the built-in chat workload's. The same
    seed gives the same workload.
    """
    times = np.asarray(times_s, dtype=np.float64)
    values = np.asarray(rates, dtype=np.float64)
    if times.shape != values.shape or times.ndim != 1 or times.size == 0:
        raise WorkloadError(f"{name}: need equal, non-empty columns of times and rates")
    if np.any(~np.isfinite(values)) or np.any(values < 0):
        raise WorkloadError(f"{name}: rates must be finite and non-negative requests per second")
    rng = np.random.default_rng(seed)
    peak = float(values.max())
    arrivals = np.zeros(0)
    if peak > 0 and duration_s > 0:
        # Thinning: draw a homogeneous process at the peak rate and keep each arrival with
        # probability rate(t) / peak, which gives a Poisson process with rate(t).
        size = int(peak * duration_s * 1.2) + 64
        candidates = np.cumsum(rng.exponential(1.0 / peak, size=size))
        candidates = candidates[candidates < duration_s]
        if interpolate:
            rate_at = np.interp(candidates, times, values)
        else:
            rate_at = values[np.clip(np.searchsorted(times, candidates, "right") - 1, 0, None)]
        arrivals = candidates[rng.random(candidates.shape[0]) < rate_at / peak]
    n = arrivals.shape[0]
    input_tokens = np.maximum(1, rng.lognormal(math.log(600), 0.8, n)).astype(np.int64)
    output_tokens = np.maximum(1, rng.lognormal(math.log(150), 0.7, n)).astype(np.int64)
    return Workload(
        name=name,
        arrival_s=arrivals,
        duration_s=float(duration_s),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )

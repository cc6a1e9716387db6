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

from warmstart.errors import WarmstartError

__all__ = [
    "BUILTIN_DURATION_S",
    "MAX_GENERATED_REQUESTS",
    "MAX_SPAN_S",
    "Workload",
    "WorkloadError",
    "builtin_workload",
    "workload_from_rate",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

BUILTIN_DURATION_S = 3600.0

# A replay evaluates the engine every simulated second (the warmstart policy's interval), so
# its run time grows with the span, whatever the request count.
# NOTE: 14 days is a judgment call, not a measured limit.
MAX_SPAN_S = 14 * 86400.0

# Arrivals generated from a rate series; each costs about 24 bytes here and more in the fleet.
MAX_GENERATED_REQUESTS = 10_000_000

# Arrivals are generated one block of this many seconds at a time, each block from its own
# random stream. Memory is then bounded by a block's requests, and a prefix of the series
# gives the same arrivals as the whole series.
_BLOCK_S = 600.0


class WorkloadError(WarmstartError, ValueError):
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
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise WorkloadError(
                f"{self.name}: invalid duration {duration_s!r}; give a positive number of seconds"
            )
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
    until_s: float | None = None,
) -> Workload:
    """Generate Poisson arrivals whose rate (requests per second) follows ``rates``.

    The rate is ``rates[i]`` from ``times_s[i]`` until the next time (a step function), or a
    straight line between points when ``interpolate`` is set. Token counts are lognormal with
    medians of 600 prompt and 150 generated tokens, the built-in chat workload's. The same
    seed gives the same workload, and ``until_s`` keeps only its first ``until_s`` seconds.
    Raise ``WorkloadError`` when the span exceeds ``MAX_SPAN_S`` or the expected number of
    requests exceeds ``MAX_GENERATED_REQUESTS``.
    """
    times = np.asarray(times_s, dtype=np.float64)
    values = np.asarray(rates, dtype=np.float64)
    if times.shape != values.shape or times.ndim != 1 or times.size == 0:
        raise WorkloadError(f"{name}: need equal, non-empty columns of times and rates")
    if not np.all(np.isfinite(times)) or np.any(np.diff(times) < 0):
        raise WorkloadError(f"{name}: rate times must be finite and sorted")
    if np.any(~np.isfinite(values)) or np.any(values < 0):
        raise WorkloadError(f"{name}: rates must be finite and non-negative requests per second")
    if seed < 0:
        raise WorkloadError(f"invalid seed {seed}; give a non-negative integer")
    end = duration_s if until_s is None else min(duration_s, until_s)
    if not (math.isfinite(end) and end >= 0):
        raise WorkloadError(f"{name}: invalid duration {end!r}; give a non-negative number")
    if end > MAX_SPAN_S:
        raise WorkloadError(
            f"{name}: the rate series spans {end / 86400:.1f} days; a replay covers at most "
            f"{MAX_SPAN_S / 86400:.0f} days: pass --duration SECONDS to replay its start"
        )
    blocks = math.ceil(end / _BLOCK_S)
    # Whole blocks are generated, up to the series' own end, and then cut at ``end``.
    generated_end = min(blocks * _BLOCK_S, duration_s)
    expected = _expected_requests(times, values, generated_end, interpolate)
    if expected > MAX_GENERATED_REQUESTS:
        raise WorkloadError(
            f"{name}: the first {generated_end:.0f} s of the rate series ask for about "
            f"{expected:.3g} requests (up to {values.max():.3g} per second); at most "
            f"{MAX_GENERATED_REQUESTS:,} can be generated, {_BLOCK_S:.0f} s at a time: pass "
            "--duration SECONDS to replay a shorter part, and check that the values are "
            "requests per second"
        )
    arrivals, inputs, outputs = [], [], []
    for block in range(blocks):
        rng = np.random.default_rng([seed, block])
        start = block * _BLOCK_S
        stop = min(start + _BLOCK_S, generated_end)
        block_arrivals = _block_arrivals(rng, times, values, start, stop, interpolate)
        n = block_arrivals.shape[0]
        arrivals.append(block_arrivals)
        inputs.append(np.maximum(1, rng.lognormal(math.log(600), 0.8, n)).astype(np.int64))
        outputs.append(np.maximum(1, rng.lognormal(math.log(150), 0.7, n)).astype(np.int64))
    arrival_s = np.concatenate(arrivals) if arrivals else np.zeros(0)
    kept = int(np.searchsorted(arrival_s, end, side="left"))
    return Workload(
        name=name,
        arrival_s=arrival_s[:kept],
        duration_s=float(end),
        input_tokens=np.concatenate(inputs, dtype=np.int64)[:kept] if inputs else _no_tokens(),
        output_tokens=np.concatenate(outputs, dtype=np.int64)[:kept] if outputs else _no_tokens(),
    )


def _no_tokens() -> IntArray:
    return np.zeros(0, dtype=np.int64)


def _segments(
    times: FloatArray, values: FloatArray, start: float, end: float, interpolate: bool
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Split [start, end) at the rate's knots; return the segment bounds and the rate at each
    segment's start and end. Before the first knot the first rate applies."""
    inner = times[(times > start) & (times < end)]
    edges = np.unique(np.concatenate(([start], inner, [end])))
    low, high = edges[:-1], edges[1:]
    if interpolate:
        return low, high, np.interp(low, times, values), np.interp(high, times, values)
    index = np.clip(np.searchsorted(times, low, side="right") - 1, 0, None)
    return low, high, values[index], values[index]


def _expected_requests(
    times: FloatArray, values: FloatArray, end: float, interpolate: bool
) -> float:
    if end <= 0:
        return 0.0
    low, high, first, last = _segments(times, values, 0.0, end, interpolate)
    return float(np.sum((first + last) / 2 * (high - low)))


def _block_arrivals(
    rng: np.random.Generator,
    times: FloatArray,
    values: FloatArray,
    start: float,
    end: float,
    interpolate: bool,
) -> FloatArray:
    """Draw sorted Poisson arrivals in [start, end).

    Each segment between knots gets a Poisson count at its highest rate, spread uniformly.
    A straight-line segment then keeps each arrival with probability rate(t) / highest rate
    (thinning), which gives a Poisson process with the rate of the line.
    """
    low, high, first, last = _segments(times, values, start, end, interpolate)
    peak = np.maximum(first, last)
    counts = rng.poisson(peak * (high - low))
    offsets = rng.random(int(counts.sum()))
    arrivals: FloatArray = np.repeat(low, counts) + np.repeat(high - low, counts) * offsets
    if interpolate:
        rate_at = np.interp(arrivals, times, values)
        arrivals = arrivals[rng.random(arrivals.shape[0]) * np.repeat(peak, counts) < rate_at]
    arrivals.sort()
    return arrivals

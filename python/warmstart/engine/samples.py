"""Metric samples and the reasons a sample is rejected.

A sample is ``(endpoint, metric, instance, timestamp_s, value)``: the producer's event time in
seconds and a float value. The engine rejects a sample, without raising, when its value or
timestamp cannot be trusted. ``RejectCounter`` counts every rejection by reason and logs a
rate-limited summary, so a bad sample is never dropped silently and one bad sample never drops
the good samples of its batch.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

logger = logging.getLogger("warmstart.engine.samples")


@dataclass(frozen=True, slots=True)
class Sample:
    """One metric reading: event time ``timestamp_s`` in seconds on the producer's clock."""

    endpoint: str
    metric: str
    instance: str
    timestamp_s: float
    value: float


class RejectReason(enum.Enum):
    """Reason the engine rejected a sample; the value is the label used in counters and logs."""

    NAN_VALUE = "nan_value"
    INFINITE_VALUE = "infinite_value"
    NEGATIVE_COUNT = "negative_count"
    VALUE_OUT_OF_RANGE = "value_out_of_range"
    INVALID_TIMESTAMP = "invalid_timestamp"
    UNKNOWN_ENDPOINT = "unknown_endpoint"
    UNKNOWN_METRIC = "unknown_metric"
    UNKNOWN_SERIES = "unknown_series"
    TOO_OLD = "too_old"
    TOO_FAR_IN_FUTURE = "too_far_in_future"
    TOO_MANY_SERIES = "too_many_series"


# Largest accepted absolute value. Sums over a window stay finite far beyond any real metric,
# so no window statistic overflows to infinity.
MAX_ABS_VALUE = 1e15

# Order of checks in a batch: the first failing check names the reason.
REASON_CODES: tuple[RejectReason, ...] = tuple(RejectReason)


class RejectCounter:
    """Count rejected samples by reason and log them, at most once per ``log_interval_s``.

    The first rejection of each reason is logged at warning level at once; later ones are
    summed and logged together when ``log_interval_s`` seconds (on the engine clock) have
    passed since the last summary.
    """

    def __init__(self, log_interval_s: float = 60.0) -> None:
        self._totals = dict.fromkeys(RejectReason, 0)
        self._unlogged = dict.fromkeys(RejectReason, 0)
        self._log_interval_s = log_interval_s
        self._last_log_at: float | None = None

    @property
    def totals(self) -> dict[RejectReason, int]:
        """Number of samples rejected for each reason since the engine was created."""
        return dict(self._totals)

    @property
    def total(self) -> int:
        """Number of samples rejected for any reason."""
        return sum(self._totals.values())

    def add(self, reason: RejectReason, count: int, now: float, example: str = "") -> None:
        """Count ``count`` rejections for ``reason`` at clock time ``now`` (seconds)."""
        if count <= 0:
            return
        first = self._totals[reason] == 0
        self._totals[reason] += count
        if first:
            logger.warning(
                "rejected %d sample(s): %s%s",
                count,
                reason.value,
                f" ({example})" if example else "",
            )
            return
        self._unlogged[reason] += count
        self._maybe_log(now)

    def add_codes(self, codes: npt.NDArray[np.int8], now: float) -> None:
        """Count rejections from reason codes (index into ``REASON_CODES``; -1 means accepted)."""
        if codes.size == 0:
            return
        counts = np.bincount(codes[codes >= 0], minlength=len(REASON_CODES))
        for index in np.flatnonzero(counts):
            self.add(REASON_CODES[int(index)], int(counts[index]), now)

    def _maybe_log(self, now: float) -> None:
        if self._last_log_at is not None and now - self._last_log_at < self._log_interval_s:
            return
        self._last_log_at = now
        summary = ", ".join(f"{r.value}={n}" for r, n in self._unlogged.items() if n)
        if summary:
            logger.warning("rejected samples since last report: %s", summary)
        self._unlogged = dict.fromkeys(RejectReason, 0)

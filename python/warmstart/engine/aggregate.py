"""Window queries and their results aggregated across the instances of an endpoint."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from warmstart.engine.window import Statistic


class Aggregation(enum.Enum):
    """Combination of the per-instance values of one metric into one endpoint value.

    - ``SUM`` for quantities that add up across instances: concurrency, queue length, requests
      or tokens per second.
    - ``MEAN`` for per-instance ratios such as KV-cache use, where the endpoint value is the
      average over instances.
    """

    SUM = "sum"
    MEAN = "mean"


@dataclass(frozen=True, slots=True)
class WindowQuery:
    """A statistic of one metric over the last ``window_s`` seconds (``half_life_s`` for EWMA)."""

    metric: str
    statistic: Statistic = Statistic.MEAN
    window_s: float = 60.0
    half_life_s: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(
                f"window_s must be a positive number of seconds, got {self.window_s!r}"
            )
        if self.statistic is Statistic.EWMA:
            if self.half_life_s is None or not self.half_life_s > 0:
                raise ValueError(
                    f"half_life_s must be a positive number of seconds for EWMA, "
                    f"got {self.half_life_s!r}"
                )
        elif self.half_life_s is not None:
            raise ValueError("half_life_s applies only to Statistic.EWMA")

    def describe(self) -> str:
        """Return a short label such as ``mean(concurrency, 60s)``."""
        extra = f", half-life {self.half_life_s:g}s" if self.half_life_s is not None else ""
        return f"{self.statistic.value}({self.metric}, {self.window_s:g}s{extra})"


class Observation(NamedTuple):
    """The endpoint value of one window query at one evaluation.

    ``value`` aggregates only fresh series with a sample in the window, and is None when there
    is none. ``reporting`` counts those series. ``stale`` counts series that stopped reporting
    (last sample older than the metric's ``stale_after_s``) plus ready instances that never sent
    this metric. When it is not zero the data is incomplete, so it must not drive a scale-down.
    """

    value: float | None
    reporting: int
    stale: int
    aggregation: Aggregation = Aggregation.SUM

    @property
    def total(self) -> float | None:
        """Sum over reporting instances: ``value`` for ``SUM``, value x reporting for ``MEAN``."""
        if self.value is None:
            return None
        if self.aggregation is Aggregation.MEAN:
            return self.value * self.reporting
        return self.value

    @property
    def complete(self) -> bool:
        """True when there is a value and no series or ready instance is missing."""
        return self.value is not None and self.stale == 0


def group_reduce(
    groups: npt.NDArray[np.int32],
    values: npt.NDArray[np.float64],
    use: npt.NDArray[np.bool_],
    n_groups: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Return per-group sums of ``values`` where ``use`` is true, and how many were used."""
    weights = np.where(use, values, 0.0)
    sums = np.bincount(groups, weights=weights, minlength=n_groups).astype(np.float64)
    counts = np.bincount(groups, weights=use.astype(np.float64), minlength=n_groups)
    return sums, counts.astype(np.int64)

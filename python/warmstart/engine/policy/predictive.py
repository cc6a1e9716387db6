"""Predictive sizing: capacity for the load expected when a new instance would be ready.

The policy records the observed load once per ``step_s`` seconds in its history (its state) and
forecasts the load at ``now + time_to_ready_s``:

- trend: a least-squares line through the history of the last ``trend_window_s`` seconds,
  extended by the horizon;
- seasonality (when ``season_s`` is set and the history reaches back one season before the
  horizon): the current level plus the change the load made over the same horizon one season
  ago.

The forecast is an estimate, so the recommendation is ``floor_only``: it can raise capacity
ahead of a ramp but never lowers capacity below what the reactive policies ask for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from warmstart.engine.aggregate import WindowQuery
from warmstart.engine.errors import EngineConfigError
from warmstart.engine.policy._util import ceil_count
from warmstart.engine.policy.base import Policy, PolicyInputs, Recommendation
from warmstart.engine.window import Statistic


class LoadHistory:
    """A ring of per-step mean loads; slot ``k % size`` contains step ``k = floor(t / step_s)``.

    ``steps[i]`` is the step index stored in slot ``i`` (-1: empty); ``total[i]`` and
    ``count[i]`` sum the loads recorded during that step. Memory: 24 bytes per slot.
    """

    def __init__(self, step_s: float, size: int) -> None:
        self.step_s = step_s
        self.size = size
        self.steps = np.full(size, -1, dtype=np.int64)
        self.total = np.zeros(size)
        self.count = np.zeros(size, dtype=np.int64)

    def record(self, now: float, load: float) -> None:
        """Add ``load`` observed at time ``now`` (seconds) to its step."""
        step = math.floor(now / self.step_s)
        slot = step % self.size
        if self.steps[slot] != step:
            self.steps[slot] = step
            self.total[slot] = 0.0
            self.count[slot] = 0
        self.total[slot] += load
        self.count[slot] += 1

    def at(self, t: float) -> float | None:
        """Return the mean load recorded in the step containing time ``t``, or None."""
        step = math.floor(t / self.step_s)
        slot = step % self.size
        if self.steps[slot] != step or self.count[slot] == 0:
            return None
        return float(self.total[slot] / self.count[slot])

    def between(self, start: float, end: float) -> tuple[npt.NDArray[np.float64], ...]:
        """Return the step midpoint times (seconds) and mean loads of steps in [start, end]."""
        first = math.floor(start / self.step_s)
        last = math.floor(end / self.step_s)
        wanted = np.arange(max(first, last - self.size + 1), last + 1, dtype=np.int64)
        slots = wanted % self.size
        present = (self.steps[slots] == wanted) & (self.count[slots] > 0)
        times = (wanted[present] + 0.5) * self.step_s
        loads = self.total[slots][present] / self.count[slots][present]
        return times, loads


@dataclass(frozen=True)
class Predictive(Policy):
    """Size for the forecast load of ``metric`` at ``target`` per instance.

    Every duration is in seconds. ``default_horizon_s`` is used when the endpoint's time to
    ready is unknown; the horizon is capped at ``max_horizon_s``. At least ``min_points`` steps
    of history within the trend window are needed before the forecast is valid.
    """

    metric: str
    target: float
    statistic: Statistic = Statistic.MEAN
    window_s: float = 60.0
    step_s: float = 60.0
    trend_window_s: float = 900.0
    season_s: float | None = None
    default_horizon_s: float = 120.0
    max_horizon_s: float = 1800.0
    min_points: int = 3
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target) and self.target > 0):
            raise EngineConfigError(f"target must be a positive finite number, got {self.target!r}")
        for attribute in ("window_s", "step_s", "trend_window_s", "max_horizon_s"):
            value = getattr(self, attribute)
            if not (math.isfinite(value) and value > 0):
                raise EngineConfigError(f"{attribute} must be positive seconds, got {value!r}")
        if self.season_s is not None and not (math.isfinite(self.season_s) and self.season_s > 0):
            raise EngineConfigError(f"season_s must be positive seconds, got {self.season_s!r}")
        if self.min_points < 2:
            raise EngineConfigError(f"min_points must be at least 2, got {self.min_points!r}")
        if not self.name:
            object.__setattr__(self, "name", f"predictive({self.metric})")

    @property
    def query(self) -> WindowQuery:
        """The window whose value is recorded as the load."""
        return WindowQuery(self.metric, self.statistic, self.window_s)

    def queries(self) -> tuple[WindowQuery, ...]:
        return (self.query,)

    def initial_state(self) -> LoadHistory:
        span = max(self.trend_window_s, (self.season_s or 0.0) + self.max_horizon_s)
        return LoadHistory(self.step_s, math.ceil(span / self.step_s) + 2)

    def recommend(self, inputs: PolicyInputs, state: Any) -> tuple[Recommendation, Any]:
        history: LoadHistory = state if isinstance(state, LoadHistory) else self.initial_state()
        capacity = inputs.capacity
        total = inputs.observe(self.query).total
        if total is not None:
            history.record(inputs.now, total)

        forecast, how = self.forecast(history, inputs.now, self.horizon(capacity.time_to_ready_s))
        if forecast is None:
            return Recommendation(self.name, 0, False, how, floor_only=True), history
        desired = ceil_count(forecast / self.target)
        reason = f"{how}: forecast load {forecast:.4g} / target {self.target:g} -> {desired}"
        return Recommendation(self.name, desired, True, reason, floor_only=True), history

    def horizon(self, time_to_ready_s: float | None) -> float:
        """Return the forecast horizon in seconds."""
        horizon = self.default_horizon_s if time_to_ready_s is None else time_to_ready_s
        return min(max(0.0, horizon), self.max_horizon_s)

    def forecast(
        self, history: LoadHistory, now: float, horizon_s: float
    ) -> tuple[float | None, str]:
        """Return the load expected at ``now + horizon_s`` and how it was derived."""
        times, loads = history.between(now - self.trend_window_s, now)
        if times.size < self.min_points:
            return None, f"{times.size} of {self.min_points} history steps needed"
        slope, level = _fit_line(times - now, loads)

        if self.season_s is not None:
            past_now = history.at(now - self.season_s)
            past_then = history.at(now + horizon_s - self.season_s)
            if past_now is not None and past_then is not None:
                forecast = level + (past_then - past_now)
                return max(0.0, forecast), f"seasonal ({self.season_s:g}s) at +{horizon_s:g}s"

        forecast = level + slope * horizon_s
        return max(0.0, forecast), f"trend {slope:+.3g}/s at +{horizon_s:g}s"


def _fit_line(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Return the least-squares slope and the line's value at x = 0."""
    x_mean = float(x.mean())
    y_mean = float(y.mean())
    spread = float(((x - x_mean) ** 2).sum())
    if spread == 0.0:
        return 0.0, y_mean
    slope = float(((x - x_mean) * (y - y_mean)).sum()) / spread
    return slope, y_mean - slope * x_mean

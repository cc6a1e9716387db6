"""Stable and panic windows with Knative KPA semantics.

The policy computes two desired counts from the same metric, ``ceil(load / target)`` over the
stable window and over the short panic window. It enters panic when the panic count divided by
the ready instances (at least 1) reaches ``panic_threshold``, and each evaluation still over the
threshold extends panic. While panicking, the desired count is the largest panic count seen
since panic began, so it never scales down. Panic ends once the load has stayed under the
threshold for a full stable window.

One rule goes beyond the KPA: when panic ends while instances it asked for are still starting
(``pending > 0``), the desired count stays at least at the panic-time maximum until they are
ready, so capacity is not cut under a burst that the stable window has not yet absorbed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from warmstart.engine.aggregate import WindowQuery
from warmstart.engine.errors import EngineConfigError
from warmstart.engine.policy._util import ceil_count
from warmstart.engine.policy.base import Policy, PolicyInputs, Recommendation
from warmstart.engine.window import Statistic


@dataclass(frozen=True, slots=True)
class BurstState:
    """Panic bookkeeping between evaluations.

    ``panic_since`` is the clock time (seconds) of the last evaluation over the threshold, or
    None when not panicking. ``max_panic`` is the largest desired count during this panic, and
    ``exit_floor`` the count held after panic ends while instances are still starting.
    """

    panic_since: float | None = None
    max_panic: int = 0
    exit_floor: int = 0

    @property
    def panicking(self) -> bool:
        """True while in panic mode."""
        return self.panic_since is not None


@dataclass(frozen=True)
class Burst(Policy):
    """KPA-style concurrency scaling: ``target`` is the load per instance (metric unit).

    Windows are in seconds; Knative's defaults are a 60 s stable window, a 6 s panic window
    (10 % of stable), a panic threshold of 2.0 (200 %), a maximum scale-up rate of 1000x and a
    maximum scale-down rate of 2x per evaluation.
    """

    metric: str
    target: float
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target) and self.target > 0):
            raise EngineConfigError(f"target must be a positive finite number, got {self.target!r}")
        if not 0 < self.panic_window_s <= self.stable_window_s:
            raise EngineConfigError(
                f"panic_window_s must be in (0, stable_window_s], got {self.panic_window_s!r}"
            )
        if not self.panic_threshold > 1:
            raise EngineConfigError(f"panic_threshold must exceed 1, got {self.panic_threshold!r}")
        if not (self.max_scale_up_rate > 1 and self.max_scale_down_rate > 1):
            raise EngineConfigError("max_scale_up_rate and max_scale_down_rate must exceed 1")
        if not self.name:
            object.__setattr__(self, "name", f"burst({self.metric})")

    @property
    def stable_query(self) -> WindowQuery:
        """Mean of the metric over the stable window."""
        return WindowQuery(self.metric, Statistic.MEAN, self.stable_window_s)

    @property
    def panic_query(self) -> WindowQuery:
        """Mean of the metric over the panic window."""
        return WindowQuery(self.metric, Statistic.MEAN, self.panic_window_s)

    def queries(self) -> tuple[WindowQuery, ...]:
        return (self.stable_query, self.panic_query)

    def initial_state(self) -> BurstState:
        return BurstState()

    def recommend(self, inputs: PolicyInputs, state: Any) -> tuple[Recommendation, Any]:
        previous: BurstState = state if isinstance(state, BurstState) else BurstState()
        capacity = inputs.capacity
        stable = inputs.observe(self.stable_query)
        panic = inputs.observe(self.panic_query)
        stable_total = stable.total
        if stable_total is None:
            reason = f"no fresh {self.stable_query.describe()} data"
            return Recommendation(self.name, capacity.current, False, reason, False), previous

        panic_total = panic.total if panic.total is not None else stable_total
        stable_desired = ceil_count(stable_total / self.target)
        panic_desired = ceil_count(panic_total / self.target)
        ready = max(1, capacity.ready)
        over = panic_desired / ready >= self.panic_threshold

        next_state = self._next_state(previous, inputs.now, over, panic_desired, capacity.current)
        if next_state.panicking:
            desired = max(next_state.max_panic, panic_desired)
            mode = "panic" if previous.panicking else "entering panic"
        else:
            desired = stable_desired
            mode = "leaving panic" if previous.panicking else "stable"
            if next_state.exit_floor:
                if capacity.pending > 0:
                    desired = max(desired, next_state.exit_floor)
                    mode += f", holding {next_state.exit_floor} while {capacity.pending} start"
                else:
                    next_state = replace(next_state, exit_floor=0)

        limited = min(desired, math.ceil(ready * self.max_scale_up_rate))
        limited = max(limited, math.floor(ready / self.max_scale_down_rate))
        reason = (
            f"{mode}: stable load {stable_total:.4g} -> {stable_desired}, panic load "
            f"{panic_total:.4g} -> {panic_desired} ({panic_desired / ready:.2f}x {ready} ready, "
            f"threshold {self.panic_threshold:g}x)"
        )
        if limited != desired:
            reason += f"; rate limit {desired} -> {limited}"
        recommendation = Recommendation(
            self.name,
            limited,
            True,
            reason,
            scale_down_allowed=stable.complete and not next_state.panicking,
        )
        return recommendation, next_state

    def _next_state(
        self, previous: BurstState, now: float, over: bool, panic_desired: int, current: int
    ) -> BurstState:
        if over:
            start_max = previous.max_panic if previous.panicking else current
            return BurstState(now, max(start_max, panic_desired), 0)
        if previous.panic_since is not None:
            if now - previous.panic_since >= self.stable_window_s:
                return BurstState(None, 0, previous.max_panic)
            return replace(previous, max_panic=max(previous.max_panic, panic_desired))
        return previous

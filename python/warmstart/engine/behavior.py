"""Behavior: the pipeline that turns policy recommendations into a decision.

Stages, in order, each recorded in the ``Decision``:

1. ``raw``: the maximum ``desired`` over valid recommendations (several policies combine by
   max); the current capacity when no policy has usable data.
2. ``tolerance``: a recommendation whose usage ratio is within ``tolerance`` of 1.0 counts as
   the current capacity instead (the HPA tolerance band, 10 % by default).
3. ``hold``: no scale-down when a policy lacks data, an input is stale, only forecasts are
   valid, or the endpoint has not yet been observed for ``restart_hold_s`` seconds.
4. ``stabilization``: HPA semantics. The scale-up bound is the minimum value of this stage over
   the last scale-up window, the scale-down bound the maximum over the last scale-down window,
   and the result is the current capacity clamped between them.
5. ``rate_limit``: HPA scaling policies, in instances (``pods``) or percent per period, combined
   by ``select``. Changes already made within a period count against it.
6. ``cooldown``: no scale-up within ``scale_up.cooldown_s`` seconds of the last scale-up, and no
   scale-down within ``scale_down.cooldown_s`` seconds of the last change in either direction.
7. ``bounds``: clamp to ``[min_capacity, max_capacity]``. With ``min_capacity == 0`` capacity
   reaches zero only after ``scale_to_zero_after_s`` seconds without a positive sample, and
   comes back to at least one on the first positive sample.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from warmstart.engine.decision import Decision, Stage
from warmstart.engine.errors import EngineConfigError
from warmstart.engine.policy.base import Capacity, Recommendation

_new_tuple = tuple.__new__


class RateKind(enum.Enum):
    """Unit of a rate policy's ``value``: instances, or percent of the capacity at period start."""

    PODS = "pods"
    PERCENT = "percent"


class SelectPolicy(enum.Enum):
    """Choice among rate policies: the one allowing the largest change, the smallest, or none."""

    MAX = "max"
    MIN = "min"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """Allow a change of ``value`` instances or percent per ``period_s`` seconds."""

    kind: RateKind
    value: float
    period_s: float

    def __post_init__(self) -> None:
        if not self.value > 0:
            raise EngineConfigError(f"rate policy value must be positive, got {self.value!r}")
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise EngineConfigError(f"period_s must be positive seconds, got {self.period_s!r}")


@dataclass(frozen=True, slots=True)
class ScalingRules:
    """Stabilization window, rate policies and cooldown for one direction; times in seconds."""

    stabilization_window_s: float = 0.0
    policies: tuple[RatePolicy, ...] = ()
    select: SelectPolicy = SelectPolicy.MAX
    cooldown_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("stabilization_window_s", "cooldown_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise EngineConfigError(f"{name} must be non-negative seconds, got {value!r}")


HPA_SCALE_UP = ScalingRules(
    stabilization_window_s=0.0,
    policies=(RatePolicy(RateKind.PERCENT, 100, 15), RatePolicy(RateKind.PODS, 4, 15)),
    select=SelectPolicy.MAX,
)
HPA_SCALE_DOWN = ScalingRules(
    stabilization_window_s=300.0,
    policies=(RatePolicy(RateKind.PERCENT, 100, 15),),
    select=SelectPolicy.MAX,
)


@dataclass(frozen=True, slots=True)
class Behavior:
    """Settings that turn recommendations into decisions; defaults are the Kubernetes HPA ones.

    ``tolerance`` is a fraction (0.1 = 10 %). ``restart_hold_s`` is the time in seconds after an
    engine start during which no scale-down happens; None means the longest window any of the
    endpoint's policies reads. ``scale_to_zero_after_s`` is the idle time in seconds before
    capacity may reach zero, used only when the endpoint's ``min_capacity`` is 0.
    """

    scale_up: ScalingRules = HPA_SCALE_UP
    scale_down: ScalingRules = HPA_SCALE_DOWN
    tolerance: float = 0.1
    restart_hold_s: float | None = None
    scale_to_zero_after_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance < 1:
            raise EngineConfigError(f"tolerance must be in [0, 1), got {self.tolerance!r}")
        if self.restart_hold_s is not None and not self.restart_hold_s >= 0:
            raise EngineConfigError(
                f"restart_hold_s must be non-negative seconds, got {self.restart_hold_s!r}"
            )
        if not self.scale_to_zero_after_s >= 0:
            raise EngineConfigError(
                f"scale_to_zero_after_s must be non-negative seconds, "
                f"got {self.scale_to_zero_after_s!r}"
            )


@dataclass(slots=True)
class BehaviorState:
    """Pipeline memory for one endpoint between evaluations (times in seconds)."""

    started_at: float | None = None
    # Candidates for the minimum over the scale-up window and the maximum over the scale-down
    # window of the values entering stabilization: (time, value), oldest first.
    up_candidates: deque[tuple[float, int]] = field(default_factory=deque)
    down_candidates: deque[tuple[float, int]] = field(default_factory=deque)
    scale_events: deque[tuple[float, int]] = field(default_factory=deque)
    last_scale_up_at: float | None = None
    last_change_at: float | None = None


class DecisionContext(NamedTuple):
    """Per-evaluation inputs of the pipeline besides the recommendations.

    ``idle_s`` is the seconds since the endpoint's last positive sample (None: never seen one).
    ``woken`` is True when a positive sample arrived while capacity was zero.
    """

    endpoint: str
    now: float
    capacity: Capacity
    min_capacity: int
    max_capacity: int
    restart_hold_s: float
    idle_s: float | None
    woken: bool


def decide(
    behavior: Behavior,
    state: BehaviorState,
    context: DecisionContext,
    recommendations: Sequence[Recommendation],
) -> Decision:
    """Run every stage for one endpoint, update ``state`` and return the decision.

    Each stage takes the previous stage's value and returns its own value and note. The engine
    calls this once per endpoint per evaluation, so it avoids per-stage objects.
    """
    now = context.now
    if state.started_at is None:
        state.started_at = now
    current = context.capacity.current
    valid = [r for r in recommendations if r.valid]

    winner, raw, raw_note = _combine(valid, current)
    tolerated, tolerance_note = _tolerance(valid, behavior.tolerance, current, raw)
    held, hold_note = _hold(recommendations, state, context, tolerated)
    stable, stabilization_note = _stabilize(behavior, state, now, current, held)
    limited, rate_note = _rate_limit(behavior, state, now, current, stable)
    cooled, cooldown_note = _cooldown(behavior, state, now, current, limited)
    bounded, bounds_note = _bounds(behavior, context, cooled)
    _remember(behavior, state, now, bounded - current)
    # Most evaluations leave no note after raw, and then the reason skips scanning the stages.
    has_notes = bool(
        tolerance_note
        or hold_note
        or stabilization_note
        or rate_note
        or cooldown_note
        or bounds_note
    )

    # tuple.__new__ builds each Stage without the generated __new__, as namedtuple's _make
    # does. With timeit on CPython 3.11 that took about half the time per stage.
    stages = (
        _new_tuple(Stage, ("raw", raw, raw_note)),
        _new_tuple(Stage, ("tolerance", tolerated, tolerance_note)),
        _new_tuple(Stage, ("hold", held, hold_note)),
        _new_tuple(Stage, ("stabilization", stable, stabilization_note)),
        _new_tuple(Stage, ("rate_limit", limited, rate_note)),
        _new_tuple(Stage, ("cooldown", cooled, cooldown_note)),
        _new_tuple(Stage, ("bounds", bounded, bounds_note)),
    )
    # Positional arguments, in field order: endpoint, at, current, desired, policy, reason,
    # stages, recommendations. Keyword arguments made this call about 40 % slower (timeit).
    return Decision(
        context.endpoint,
        now,
        current,
        bounded,
        winner.policy if winner else None,
        _summary(current, bounded, winner, stages, has_notes),
        stages,
        tuple(recommendations),
    )


def _combine(
    valid: Sequence[Recommendation], current: int
) -> tuple[Recommendation | None, int, str]:
    if not valid:
        return None, current, "no policy has usable data; keep current capacity"
    if len(valid) == 1:
        winner = valid[0]
    else:
        # Ties go to the first-listed policy, and a reactive policy wins a tie with a forecast.
        winner = max(valid, key=lambda r: (r.desired, not r.floor_only))
    return winner, winner.desired, f"max of {len(valid)} valid recommendation(s)"


def _tolerated(rec: Recommendation, tolerance: float, current: int) -> int:
    if rec.usage_ratio is not None and abs(rec.usage_ratio - 1.0) <= tolerance:
        return current
    return rec.desired


def _tolerance(
    valid: Sequence[Recommendation], tolerance: float, current: int, value: int
) -> tuple[int, str]:
    if not valid:
        return value, ""
    if len(valid) == 1:
        tolerated = _tolerated(valid[0], tolerance, current)
    else:
        tolerated = max(_tolerated(r, tolerance, current) for r in valid)
    if tolerated == value:
        return tolerated, ""
    return tolerated, f"usage within {tolerance:.0%} of target; keep {tolerated}"


def _hold(
    recs: Sequence[Recommendation], state: BehaviorState, context: DecisionContext, value: int
) -> tuple[int, str]:
    current = context.capacity.current
    if value >= current:
        return value, ""
    invalid = []
    blocked = []
    reactive = False
    for rec in recs:
        if rec.valid:
            if not rec.scale_down_allowed:
                blocked.append(rec.policy)
            if not rec.floor_only:
                reactive = True
        elif not rec.floor_only:
            invalid.append(rec.policy)
    reasons = []
    if invalid:
        reasons.append("no data for " + ", ".join(invalid))
    if blocked:
        reasons.append("stale or missing data for " + ", ".join(blocked))
    if not reactive:
        reasons.append("no reactive policy has data")
    assert state.started_at is not None
    observed_s = context.now - state.started_at
    if observed_s < context.restart_hold_s:
        reasons.append(f"observed {observed_s:g}s of {context.restart_hold_s:g}s since start")
    if reasons:
        return current, "scale-down blocked: " + "; ".join(reasons)
    return value, ""


def _stabilize(
    behavior: Behavior, state: BehaviorState, now: float, current: int, value: int
) -> tuple[int, str]:
    up_window = behavior.scale_up.stabilization_window_s
    down_window = behavior.scale_down.stabilization_window_s
    up_bound = _push_min(state.up_candidates, now, value, now - up_window)
    down_bound = _push_max(state.down_candidates, now, value, now - down_window)
    stable = min(max(current, up_bound), down_bound)
    if stable < value:
        return stable, f"min over last {up_window:g}s of scale-up window is {up_bound}"
    if stable > value:
        return stable, f"max over last {down_window:g}s of scale-down window is {down_bound}"
    return stable, ""


def _push_min(window: deque[tuple[float, int]], now: float, value: int, oldest: float) -> int:
    """Add ``value`` at ``now``, drop entries older than ``oldest`` and return the minimum.

    The deque holds only values that can still become the minimum as older ones expire, in
    time order, so each push and each expiry is amortized O(1).
    """
    while window and window[-1][1] >= value:
        window.pop()
    window.append((now, value))
    while window[0][0] < oldest:
        window.popleft()
    return window[0][1]


def _push_max(window: deque[tuple[float, int]], now: float, value: int, oldest: float) -> int:
    """Add ``value`` at ``now``, drop entries older than ``oldest`` and return the maximum."""
    while window and window[-1][1] <= value:
        window.pop()
    window.append((now, value))
    while window[0][0] < oldest:
        window.popleft()
    return window[0][1]


def _changes_in(state: BehaviorState, now: float, period_s: float) -> tuple[int, int]:
    added = removed = 0
    for at, delta in state.scale_events:
        if at > now - period_s:
            if delta > 0:
                added += delta
            else:
                removed -= delta
    return added, removed


def _changes_by_period(
    rules: ScalingRules, state: BehaviorState, now: float
) -> list[tuple[int, int]]:
    """Return ``_changes_in`` for each rate policy, scanning the events once per period."""
    counted: dict[float, tuple[int, int]] = {}
    changes = []
    for policy in rules.policies:
        period_s = policy.period_s
        found = counted.get(period_s)
        if found is None:
            found = counted[period_s] = _changes_in(state, now, period_s)
        changes.append(found)
    return changes


def _up_limit(rules: ScalingRules, state: BehaviorState, now: float, current: int) -> int | None:
    """Return the highest capacity the rate policies allow now, or None for no limit."""
    if rules.select is SelectPolicy.DISABLED:
        return current
    limits = []
    changes = _changes_by_period(rules, state, now)
    for policy, (added, _) in zip(rules.policies, changes, strict=True):
        start = current - added
        if policy.kind is RateKind.PODS:
            limits.append(start + math.floor(policy.value))
        else:
            # Percent of zero is zero; from zero the period start counts as one instance.
            limits.append(math.ceil(max(start, 1) * (1 + policy.value / 100) - 1e-9))
    if not limits:
        return None
    return max(limits) if rules.select is SelectPolicy.MAX else min(limits)


def _down_limit(rules: ScalingRules, state: BehaviorState, now: float, current: int) -> int:
    """Return the lowest capacity the rate policies allow now."""
    if rules.select is SelectPolicy.DISABLED:
        return current
    limits = []
    changes = _changes_by_period(rules, state, now)
    for policy, (_, removed) in zip(rules.policies, changes, strict=True):
        start = current + removed
        if policy.kind is RateKind.PODS:
            limits.append(start - math.floor(policy.value))
        else:
            limits.append(math.floor(start * (1 - policy.value / 100) + 1e-9))
    if not limits:
        return 0
    # MAX selects the policy allowing the largest change, which is the lowest limit.
    return min(limits) if rules.select is SelectPolicy.MAX else max(limits)


def _rate_limit(
    behavior: Behavior, state: BehaviorState, now: float, current: int, value: int
) -> tuple[int, str]:
    if value > current:
        up_limit = _up_limit(behavior.scale_up, state, now, current)
        if up_limit is not None and value > up_limit:
            return up_limit, f"scale-up limited to {up_limit} by rate policies"
    elif value < current:
        limit = _down_limit(behavior.scale_down, state, now, current)
        if value < limit:
            return limit, f"scale-down limited to {limit} by rate policies"
    return value, ""


def _cooldown(
    behavior: Behavior, state: BehaviorState, now: float, current: int, value: int
) -> tuple[int, str]:
    up_cooldown = behavior.scale_up.cooldown_s
    down_cooldown = behavior.scale_down.cooldown_s
    last_up = state.last_scale_up_at
    last_change = state.last_change_at
    if value > current and current > 0 and last_up is not None and now - last_up < up_cooldown:
        since = now - last_up
        return current, f"scale-up cooldown: {since:g}s of {up_cooldown:g}s since last scale-up"
    if value < current and last_change is not None and now - last_change < down_cooldown:
        since = now - last_change
        return current, f"scale-down cooldown: {since:g}s of {down_cooldown:g}s since change"
    return value, ""


def _bounds(behavior: Behavior, context: DecisionContext, value: int) -> tuple[int, str]:
    min_capacity = context.min_capacity
    max_capacity = context.max_capacity
    scales_to_zero = min_capacity == 0 and max_capacity > 0
    if min_capacity <= value <= max_capacity and not scales_to_zero:
        return value, ""
    bounded = min(max(value, min_capacity), max_capacity)
    notes = []
    if bounded != value:
        notes.append(f"clamped to [{min_capacity}, {max_capacity}]")
    if scales_to_zero:
        current = context.capacity.current
        idle_s = context.idle_s
        idle_enough = idle_s is not None and idle_s >= behavior.scale_to_zero_after_s
        if bounded == 0 and current > 0 and not idle_enough:
            bounded = 1
            notes.append(f"scale to zero waits for {behavior.scale_to_zero_after_s:g}s idle")
        if bounded == 0 and current == 0 and context.woken:
            bounded = 1
            notes.append("first positive sample at zero capacity")
    return bounded, "; ".join(notes)


def _remember(behavior: Behavior, state: BehaviorState, now: float, delta: int) -> None:
    events = state.scale_events
    if delta:
        events.append((now, delta))
        state.last_change_at = now
        if delta > 0:
            state.last_scale_up_at = now
    if not events:
        return
    longest_period_s = 0.0
    for rules in (behavior.scale_up, behavior.scale_down):
        for policy in rules.policies:
            longest_period_s = max(longest_period_s, policy.period_s)
    while events and events[0][0] <= now - longest_period_s:
        events.popleft()


def _summary(
    current: int,
    desired: int,
    winner: Recommendation | None,
    stages: tuple[Stage, ...],
    has_notes: bool,
) -> str:
    if desired > current:
        head = f"scale up {current} -> {desired}"
    elif desired < current:
        head = f"scale down {current} -> {desired}"
    else:
        head = f"hold at {current}"
    # Parts joined by "; ": the head, the winning policy's reason, then each stage note.
    if winner is not None:
        head = f"{head}; {winner.policy}: {winner.reason}"
    if not has_notes:
        return head
    notes = "; ".join([f"{s.name}: {s.note}" for s in stages[1:] if s.note])
    return f"{head}; {notes}"

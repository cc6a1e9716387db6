"""The behavior pipeline written as one function per stage: the reference for ``decide``.

``warmstart.engine.behavior.decide`` runs the same stages fused into one function for speed.
This module keeps the stage-by-stage form, and the equivalence tests require both to return
equal decisions and leave equal state.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from warmstart.engine.behavior import (
    Behavior,
    BehaviorState,
    DecisionContext,
    RateKind,
    ScalingRules,
    SelectPolicy,
)
from warmstart.engine.decision import Decision, Stage
from warmstart.engine.policy.base import Recommendation


class _Pipeline:
    """One run of the stages; keeps the stage list and the value as it moves."""

    def __init__(self, context: DecisionContext) -> None:
        self.context = context
        self.stages: list[Stage] = []
        self.value = context.capacity.current

    def record(self, name: str, value: int, note: str = "") -> None:
        self.value = value
        self.stages.append(Stage(name, value, note))

    def keep(self, name: str) -> None:
        """Record a stage that left the value unchanged."""
        self.stages.append(Stage(name, self.value, ""))


def decide(
    behavior: Behavior,
    state: BehaviorState,
    context: DecisionContext,
    recommendations: Sequence[Recommendation],
) -> Decision:
    """Run every stage for one endpoint, update ``state`` and return the decision."""
    if state.started_at is None:
        state.started_at = context.now
    run = _Pipeline(context)
    winner = _combine(run, recommendations)
    _tolerance(run, behavior, recommendations)
    _hold(run, state, recommendations)
    _stabilize(run, behavior, state)
    _rate_limit(run, behavior, state)
    _cooldown(run, behavior, state)
    _bounds(run, behavior)
    _remember(run, behavior, state)
    return Decision(
        endpoint=context.endpoint,
        at=context.now,
        current=context.capacity.current,
        desired=run.value,
        policy=winner.policy if winner else None,
        reason=_summary(run, winner),
        stages=tuple(run.stages),
        recommendations=tuple(recommendations),
    )


def _combine(run: _Pipeline, recommendations: Sequence[Recommendation]) -> Recommendation | None:
    valid = [r for r in recommendations if r.valid]
    if not valid:
        run.record("raw", run.value, "no policy has usable data; keep current capacity")
        return None
    # Ties go to the first-listed policy, and a reactive policy wins a tie with a forecast.
    winner = max(valid, key=lambda r: (r.desired, not r.floor_only))
    run.record("raw", winner.desired, f"max of {len(valid)} valid recommendation(s)")
    return winner


def _tolerated(rec: Recommendation, tolerance: float, current: int) -> int:
    if rec.usage_ratio is not None and abs(rec.usage_ratio - 1.0) <= tolerance:
        return current
    return rec.desired


def _tolerance(run: _Pipeline, behavior: Behavior, recs: Sequence[Recommendation]) -> None:
    current = run.context.capacity.current
    valid = [r for r in recs if r.valid]
    if not valid:
        run.record("tolerance", run.value)
        return
    value = max(_tolerated(r, behavior.tolerance, current) for r in valid)
    note = ""
    if value != run.value:
        note = f"usage within {behavior.tolerance:.0%} of target; keep {value}"
    run.record("tolerance", value, note)


def _hold(run: _Pipeline, state: BehaviorState, recs: Sequence[Recommendation]) -> None:
    context = run.context
    current = context.capacity.current
    reasons = []
    invalid = [r.policy for r in recs if not r.valid and not r.floor_only]
    if invalid:
        reasons.append("no data for " + ", ".join(invalid))
    blocked = [r.policy for r in recs if r.valid and not r.scale_down_allowed]
    if blocked:
        reasons.append("stale or missing data for " + ", ".join(blocked))
    if not any(r.valid and not r.floor_only for r in recs):
        reasons.append("no reactive policy has data")
    assert state.started_at is not None
    observed_s = context.now - state.started_at
    if observed_s < context.restart_hold_s:
        reasons.append(f"observed {observed_s:g}s of {context.restart_hold_s:g}s since start")
    if reasons and run.value < current:
        run.record("hold", current, "scale-down blocked: " + "; ".join(reasons))
    else:
        run.keep("hold")


def _stabilize(run: _Pipeline, behavior: Behavior, state: BehaviorState) -> None:
    now = run.context.now
    current = run.context.capacity.current
    up_window = behavior.scale_up.stabilization_window_s
    down_window = behavior.scale_down.stabilization_window_s
    up_bound = _push_window(state.up_candidates, now, run.value, now - up_window, lower=True)
    down_bound = _push_window(state.down_candidates, now, run.value, now - down_window, lower=False)
    value = min(max(current, up_bound), down_bound)
    note = ""
    if value != run.value:
        if value < run.value:
            note = f"min over last {up_window:g}s of scale-up window is {up_bound}"
        else:
            note = f"max over last {down_window:g}s of scale-down window is {down_bound}"
    run.record("stabilization", value, note)


def _push_window(
    window: deque[tuple[float, int]], now: float, value: int, oldest: float, *, lower: bool
) -> int:
    """Add ``value`` at ``now`` and return the window's minimum (``lower``) or maximum.

    The deque holds only values that can still become the extreme as older ones expire, in
    time order, so each push and each expiry is amortized O(1).
    """
    if lower:
        while window and window[-1][1] >= value:
            window.pop()
    else:
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


def _up_limit(rules: ScalingRules, state: BehaviorState, now: float, current: int) -> int | None:
    """Return the highest capacity the rate policies allow now, or None for no limit."""
    limits = []
    for policy in rules.policies:
        added, _ = _changes_in(state, now, policy.period_s)
        start = current - added
        if policy.kind is RateKind.PODS:
            limits.append(start + math.floor(policy.value))
        else:
            # Percent of zero is zero; from zero the period start counts as one instance.
            limits.append(math.ceil(max(start, 1) * (1 + policy.value / 100) - 1e-9))
    if rules.select is SelectPolicy.DISABLED:
        return current
    if not limits:
        return None
    return max(limits) if rules.select is SelectPolicy.MAX else min(limits)


def _down_limit(rules: ScalingRules, state: BehaviorState, now: float, current: int) -> int:
    """Return the lowest capacity the rate policies allow now."""
    limits = []
    for policy in rules.policies:
        _, removed = _changes_in(state, now, policy.period_s)
        start = current + removed
        if policy.kind is RateKind.PODS:
            limits.append(start - math.floor(policy.value))
        else:
            limits.append(math.floor(start * (1 - policy.value / 100) + 1e-9))
    if rules.select is SelectPolicy.DISABLED:
        return current
    if not limits:
        return 0
    # MAX selects the policy allowing the largest change, which is the lowest limit.
    return min(limits) if rules.select is SelectPolicy.MAX else max(limits)


def _rate_limit(run: _Pipeline, behavior: Behavior, state: BehaviorState) -> None:
    now = run.context.now
    current = run.context.capacity.current
    value = run.value
    note = ""
    if value > current:
        up_limit = _up_limit(behavior.scale_up, state, now, current)
        if up_limit is not None and value > up_limit:
            value, note = up_limit, f"scale-up limited to {up_limit} by rate policies"
    elif value < current:
        limit = _down_limit(behavior.scale_down, state, now, current)
        if value < limit:
            value, note = limit, f"scale-down limited to {limit} by rate policies"
    run.record("rate_limit", value, note)


def _cooldown(run: _Pipeline, behavior: Behavior, state: BehaviorState) -> None:
    now = run.context.now
    current = run.context.capacity.current
    value = run.value
    note = ""
    up_cooldown = behavior.scale_up.cooldown_s
    down_cooldown = behavior.scale_down.cooldown_s
    last_up = state.last_scale_up_at
    last_change = state.last_change_at
    if value > current and current > 0 and last_up is not None and now - last_up < up_cooldown:
        value = current
        note = f"scale-up cooldown: {now - last_up:g}s of {up_cooldown:g}s since last scale-up"
    elif value < current and last_change is not None and now - last_change < down_cooldown:
        value = current
        note = f"scale-down cooldown: {now - last_change:g}s of {down_cooldown:g}s since change"
    run.record("cooldown", value, note)


def _bounds(run: _Pipeline, behavior: Behavior) -> None:
    context = run.context
    value = min(max(run.value, context.min_capacity), context.max_capacity)
    notes = []
    if value != run.value:
        notes.append(f"clamped to [{context.min_capacity}, {context.max_capacity}]")
    if context.min_capacity == 0 and context.max_capacity > 0:
        current = context.capacity.current
        idle_s = context.idle_s
        idle_enough = idle_s is not None and idle_s >= behavior.scale_to_zero_after_s
        if value == 0 and current > 0 and not idle_enough:
            value = 1
            notes.append(f"scale to zero waits for {behavior.scale_to_zero_after_s:g}s idle")
        if value == 0 and current == 0 and context.woken:
            value = 1
            notes.append("first positive sample at zero capacity")
    run.record("bounds", value, "; ".join(notes))


def _remember(run: _Pipeline, behavior: Behavior, state: BehaviorState) -> None:
    now = run.context.now
    delta = run.value - run.context.capacity.current
    if delta:
        state.scale_events.append((now, delta))
        state.last_change_at = now
        if delta > 0:
            state.last_scale_up_at = now
    rates = behavior.scale_up.policies + behavior.scale_down.policies
    longest_period_s = max((p.period_s for p in rates), default=0.0)
    while state.scale_events and state.scale_events[0][0] <= now - longest_period_s:
        state.scale_events.popleft()


def _summary(run: _Pipeline, winner: Recommendation | None) -> str:
    context = run.context
    current = context.capacity.current
    if run.value > current:
        head = f"scale up {current} -> {run.value}"
    elif run.value < current:
        head = f"scale down {current} -> {run.value}"
    else:
        head = f"hold at {current}"
    parts = [head]
    if winner is not None:
        parts.append(f"{winner.policy}: {winner.reason}")
    parts += [f"{s.name}: {s.note}" for s in run.stages[1:] if s.note]
    return "; ".join(parts)

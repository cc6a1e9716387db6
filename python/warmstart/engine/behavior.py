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

import dataclasses
import enum
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from warmstart.engine.decision import STAGES, Decision, Stage, build_decision
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
    """Run every stage for one endpoint, update ``state`` and return the decision."""
    return run_stages(
        behavior,
        longest_rate_period_s(behavior),
        state,
        context.endpoint,
        context.now,
        context.capacity.current,
        context.min_capacity,
        context.max_capacity,
        context.restart_hold_s,
        context.idle_s,
        context.woken,
        recommendations,
    )


def longest_rate_period_s(behavior: Behavior) -> float:
    """Return the longest period of the rate policies in seconds, 0 if there are none.

    Scale events older than this never count again, so ``run_stages`` drops them.
    """
    longest_period_s = 0.0
    for rules in (behavior.scale_up, behavior.scale_down):
        for policy in rules.policies:
            longest_period_s = max(longest_period_s, policy.period_s)
    return longest_period_s


def run_stages(
    behavior: Behavior,
    longest_period_s: float,
    state: BehaviorState,
    endpoint: str,
    now: float,
    current: int,
    min_capacity: int,
    max_capacity: int,
    restart_hold_s: float,
    idle_s: float | None,
    woken: bool,
    recommendations: Sequence[Recommendation],
) -> Decision:
    """Run every stage for one endpoint, update ``state`` and return the decision.

    ``decide`` with the context unpacked and ``longest_period_s`` from
    ``longest_rate_period_s(behavior)``, so the engine computes it once per endpoint and
    builds no context. The engine calls this once per endpoint per evaluation, so the common
    cases run inline: one recommendation, and the stages that cannot change the value skipped
    (hold, rate limit and cooldown act only on a value that differs from ``current``, bounds
    only on a value out of bounds or with scale to zero). Skipping gives the same result as
    running them.
    """
    if state.started_at is None:
        state.started_at = now
    tolerance_note = ""
    winner: Recommendation | None
    if len(recommendations) == 1 and recommendations[0].valid:
        # ``_combine`` and ``_tolerance`` for one valid recommendation.
        only = winner = recommendations[0]
        raw = tolerated = only.desired
        raw_note = _MAX_NOTES[1]
        ratio = only.usage_ratio
        if ratio is not None and abs(ratio - 1.0) <= behavior.tolerance and raw != current:
            tolerated = current
            tolerance_note = describe_tolerance(behavior.tolerance, current)
    else:
        valid = [r for r in recommendations if r.valid]
        winner, raw, raw_note = _combine(valid, current)
        tolerated, tolerance_note = _tolerance(valid, behavior.tolerance, current, raw)

    held, hold_note = tolerated, ""
    if tolerated < current:
        held, hold_note = _hold(recommendations, state, now, current, restart_hold_s, tolerated)

    # Stabilization. Each deque holds, in time order, only the entries that can still become
    # the minimum (up) or maximum (down) as older ones expire, so each push and expiry is
    # amortized O(1), and its first entry is the bound. Both deques share the new entry.
    entry = (now, held)
    up = state.up_candidates
    while up and up[-1][1] >= held:
        up.pop()
    up.append(entry)
    up_oldest = now - behavior.scale_up.stabilization_window_s
    while up[0][0] < up_oldest:
        up.popleft()
    down = state.down_candidates
    while down and down[-1][1] <= held:
        down.pop()
    down.append(entry)
    down_oldest = now - behavior.scale_down.stabilization_window_s
    while down[0][0] < down_oldest:
        down.popleft()
    up_bound = up[0][1]
    down_bound = down[0][1]
    stable = min(max(current, up_bound), down_bound)
    stabilization_note = ""
    if stable != held:
        stabilization_note = describe_stabilization(behavior, held, stable, up_bound, down_bound)

    limited, rate_note = stable, ""
    cooled, cooldown_note = stable, ""
    if stable != current:
        limited, rate_note = _rate_limit(behavior, state, now, current, stable)
        cooled = limited
        if limited != current:
            cooled, cooldown_note = _cooldown(behavior, state, now, current, limited)
    bounded, bounds_note = cooled, ""
    if not min_capacity <= cooled <= max_capacity or min_capacity == 0 < max_capacity:
        bounded, bounds_note = _bounds(
            behavior, min_capacity, max_capacity, current, idle_s, woken, cooled
        )

    # Remember the change for the rate limits and cooldowns, and forget changes older than
    # every rate period.
    delta = bounded - current
    events = state.scale_events
    if delta:
        events.append((now, delta))
        state.last_change_at = now
        if delta > 0:
            state.last_scale_up_at = now
    while events and events[0][0] <= now - longest_period_s:
        events.popleft()

    return assemble_decision(
        endpoint,
        now,
        current,
        recommendations,
        winner,
        raw,
        raw_note,
        tolerated,
        tolerance_note,
        held,
        hold_note,
        stable,
        stabilization_note,
        limited,
        rate_note,
        cooled,
        cooldown_note,
        bounded,
        bounds_note,
    )


def assemble_decision(
    endpoint: str,
    now: float,
    current: int,
    recommendations: Sequence[Recommendation],
    winner: Recommendation | None,
    raw: int,
    raw_note: str,
    tolerated: int,
    tolerance_note: str,
    held: int,
    hold_note: str,
    stable: int,
    stabilization_note: str,
    limited: int,
    rate_note: str,
    cooled: int,
    cooldown_note: str,
    bounded: int,
    bounds_note: str,
) -> Decision:
    """Return the decision with the value and note of every stage, and its reason.

    The reason is the change, the winning policy's reason, then each stage note as
    "stage: note", joined by "; ".
    """
    if bounded > current:
        reason = f"scale up {current} -> {bounded}"
    elif bounded < current:
        reason = f"scale down {current} -> {bounded}"
    else:
        reason = f"hold at {current}"
    if winner is not None:
        reason = f"{reason}; {winner.policy}: {winner.reason}"
    if (
        tolerance_note
        or hold_note
        or stabilization_note
        or rate_note
        or cooldown_note
        or bounds_note
    ):
        notes = [reason]
        if tolerance_note:
            notes.append("tolerance: " + tolerance_note)
        if hold_note:
            notes.append("hold: " + hold_note)
        if stabilization_note:
            notes.append("stabilization: " + stabilization_note)
        if rate_note:
            notes.append("rate_limit: " + rate_note)
        if cooldown_note:
            notes.append("cooldown: " + cooldown_note)
        if bounds_note:
            notes.append("bounds: " + bounds_note)
        reason = "; ".join(notes)
        stages: tuple[Stage, ...] = (
            _shared_stage(0, raw, raw_note),
            _stage(1, tolerated, tolerance_note),
            _stage(2, held, hold_note),
            _stage(3, stable, stabilization_note),
            _stage(4, limited, rate_note),
            _stage(5, cooled, cooldown_note),
            _stage(6, bounded, bounds_note),
        )
    else:
        # Without notes after raw, every stage kept the raw value.
        stages = _unchanged_stages(raw_note, raw)
    return build_decision(
        endpoint,
        now,
        current,
        bounded,
        winner.policy if winner else None,
        reason,
        stages,
        tuple(recommendations),
    )


_HOLD = STAGES.index("hold")


def add_hold_note(decision: Decision, note: str) -> Decision:
    """Return ``decision`` with ``note`` added to its hold stage's note and to its reason."""
    stages = decision.stages
    hold = stages[_HOLD]
    noted = Stage(hold.name, hold.value, f"{hold.note}; {note}" if hold.note else note)
    new_stages = (*stages[:_HOLD], noted, *stages[_HOLD + 1 :])
    # The reason ends with the stage notes, as ``assemble_decision`` joins them.
    head = decision.reason[: len(decision.reason) - len(_joined_notes(stages))]
    return dataclasses.replace(decision, reason=head + _joined_notes(new_stages), stages=new_stages)


def _joined_notes(stages: Sequence[Stage]) -> str:
    return "".join(f"; {stage.name}: {stage.note}" for stage in stages[1:] if stage.note)


# Stages are immutable, so decisions share the common ones. The engine keeps the last decision
# of every endpoint and callers often keep a pass's decisions, so fewer objects per decision
# make the garbage collector run less often. Only stages whose value is an int are shared,
# because a cache keyed by value would return 3 for 3.0 or numpy.int64(3), which print
# differently. The caches are cleared when full, to bound memory.
_SHARED_STAGES_MAX = 4096
# Stage tuples of decisions whose stages all kept the raw value, by (raw note, value).
_UNCHANGED_STAGES: dict[tuple[str, int], tuple[Stage, ...]] = {}
# Stages by (stage index in STAGES, value, note), for the notes that do not carry numbers:
# none, and the raw stage's.
_SHARED_STAGES: dict[tuple[int, int, str], Stage] = {}


def _stage(index: int, value: int, note: str) -> Stage:
    """Return ``Stage(STAGES[index], value, note)``, shared when ``note`` is empty."""
    if note:
        # tuple.__new__ builds the Stage without the generated __new__, as namedtuple's _make
        # does. With timeit on CPython 3.11 that took about half the time.
        stage: Stage = _new_tuple(Stage, (STAGES[index], value, note))
        return stage
    return _shared_stage(index, value, note)


def _shared_stage(index: int, value: int, note: str) -> Stage:
    if type(value) is not int:
        return Stage(STAGES[index], value, note)
    key = (index, value, note)
    stage = _SHARED_STAGES.get(key)
    if stage is None:
        if len(_SHARED_STAGES) >= _SHARED_STAGES_MAX:
            _SHARED_STAGES.clear()
        stage = _SHARED_STAGES[key] = Stage(STAGES[index], value, note)
    return stage


def _unchanged_stages(raw_note: str, value: int) -> tuple[Stage, ...]:
    if type(value) is not int:
        return (Stage("raw", value, raw_note), *(Stage(name, value, "") for name in STAGES[1:]))
    key = (raw_note, value)
    stages = _UNCHANGED_STAGES.get(key)
    if stages is None:
        if len(_UNCHANGED_STAGES) >= _SHARED_STAGES_MAX:
            _UNCHANGED_STAGES.clear()
        stages = _UNCHANGED_STAGES[key] = (
            Stage("raw", value, raw_note),
            *(Stage(name, value, "") for name in STAGES[1:]),
        )
    return stages


_NO_DATA_NOTE = "no policy has usable data; keep current capacity"
# The raw stage's note for one to three valid recommendations, formatted once.
_MAX_NOTES = tuple(f"max of {n} valid recommendation(s)" for n in range(4))


def describe_raw(valid: int) -> str:
    """Return the raw stage's note for ``valid`` valid recommendations."""
    if valid == 0:
        return _NO_DATA_NOTE
    if valid < len(_MAX_NOTES):
        return _MAX_NOTES[valid]
    return f"max of {valid} valid recommendation(s)"


def _combine(
    valid: Sequence[Recommendation], current: int
) -> tuple[Recommendation | None, int, str]:
    count = len(valid)
    if count == 0:
        return None, current, _NO_DATA_NOTE
    if count == 1:
        winner = valid[0]
        return winner, winner.desired, _MAX_NOTES[1]
    # Ties go to the first-listed policy, and a reactive policy wins a tie with a forecast.
    winner = max(valid, key=lambda r: (r.desired, not r.floor_only))
    return winner, winner.desired, describe_raw(count)


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
    return tolerated, describe_tolerance(tolerance, tolerated)


def describe_tolerance(tolerance: float, tolerated: int) -> str:
    """Return the tolerance stage's note when it changed the value to ``tolerated``."""
    return f"usage within {tolerance:.0%} of target; keep {tolerated}"


def _hold(
    recs: Sequence[Recommendation],
    state: BehaviorState,
    now: float,
    current: int,
    restart_hold_s: float,
    value: int,
) -> tuple[int, str]:
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
    assert state.started_at is not None
    note = describe_hold(invalid, blocked, reactive, now - state.started_at, restart_hold_s)
    if note:
        return current, note
    return value, ""


def describe_hold(
    invalid: Sequence[str],
    blocked: Sequence[str],
    reactive: bool,
    observed_s: float,
    restart_hold_s: float,
) -> str:
    """Return why scale-down is blocked, or "" when it is not.

    ``invalid`` names the reactive policies without data, ``blocked`` the valid ones with
    stale or missing data; ``reactive`` is whether a reactive policy is valid.
    """
    reasons = []
    if invalid:
        reasons.append("no data for " + ", ".join(invalid))
    if blocked:
        reasons.append("stale or missing data for " + ", ".join(blocked))
    if not reactive:
        reasons.append("no reactive policy has data")
    if observed_s < restart_hold_s:
        reasons.append(f"observed {observed_s:g}s of {restart_hold_s:g}s since start")
    if reasons:
        return "scale-down blocked: " + "; ".join(reasons)
    return ""


def describe_stabilization(
    behavior: Behavior, value: int, stable: int, up_bound: int, down_bound: int
) -> str:
    """Return the stabilization stage's note when it changed ``value`` to ``stable``."""
    if stable < value:
        up_window = behavior.scale_up.stabilization_window_s
        return f"min over last {up_window:g}s of scale-up window is {up_bound}"
    down_window = behavior.scale_down.stabilization_window_s
    return f"max over last {down_window:g}s of scale-down window is {down_bound}"


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
    select = rules.select
    if select is SelectPolicy.DISABLED:
        return current
    limit = None
    # Policies usually share one period, so the events are scanned once per distinct period
    # in a row.
    counted_period_s = None
    added = 0
    for policy in rules.policies:
        if policy.period_s != counted_period_s:
            counted_period_s = policy.period_s
            added, _ = _changes_in(state, now, counted_period_s)
        start = current - added
        if policy.kind is RateKind.PODS:
            allowed = start + math.floor(policy.value)
        else:
            # Percent of zero is zero; from zero the period start counts as one instance.
            allowed = math.ceil(max(start, 1) * (1 + policy.value / 100) - 1e-9)
        if limit is None:
            limit = allowed
        elif select is SelectPolicy.MAX:
            limit = max(limit, allowed)
        else:
            limit = min(limit, allowed)
    return limit


def _down_limit(rules: ScalingRules, state: BehaviorState, now: float, current: int) -> int:
    """Return the lowest capacity the rate policies allow now."""
    select = rules.select
    if select is SelectPolicy.DISABLED:
        return current
    limit = None
    counted_period_s = None
    removed = 0
    for policy in rules.policies:
        if policy.period_s != counted_period_s:
            counted_period_s = policy.period_s
            _, removed = _changes_in(state, now, counted_period_s)
        start = current + removed
        if policy.kind is RateKind.PODS:
            allowed = start - math.floor(policy.value)
        else:
            allowed = math.floor(start * (1 - policy.value / 100) + 1e-9)
        if limit is None:
            limit = allowed
        elif select is SelectPolicy.MAX:
            # MAX selects the policy allowing the largest change, which is the lowest limit.
            limit = min(limit, allowed)
        else:
            limit = max(limit, allowed)
    return 0 if limit is None else limit


def _rate_limit(
    behavior: Behavior, state: BehaviorState, now: float, current: int, value: int
) -> tuple[int, str]:
    if value > current:
        up_limit = _up_limit(behavior.scale_up, state, now, current)
        if up_limit is not None and value > up_limit:
            return up_limit, describe_rate_limit(True, up_limit)
    elif value < current:
        limit = _down_limit(behavior.scale_down, state, now, current)
        if value < limit:
            return limit, describe_rate_limit(False, limit)
    return value, ""


def describe_rate_limit(up: bool, limit: int) -> str:
    """Return the rate limit stage's note when it limited a scale-up or scale-down to ``limit``."""
    if up:
        return f"scale-up limited to {limit} by rate policies"
    return f"scale-down limited to {limit} by rate policies"


def _cooldown(
    behavior: Behavior, state: BehaviorState, now: float, current: int, value: int
) -> tuple[int, str]:
    up_cooldown = behavior.scale_up.cooldown_s
    down_cooldown = behavior.scale_down.cooldown_s
    last_up = state.last_scale_up_at
    last_change = state.last_change_at
    if value > current and current > 0 and last_up is not None and now - last_up < up_cooldown:
        return current, describe_cooldown(True, now - last_up, up_cooldown)
    if value < current and last_change is not None and now - last_change < down_cooldown:
        return current, describe_cooldown(False, now - last_change, down_cooldown)
    return value, ""


def describe_cooldown(up: bool, since_s: float, cooldown_s: float) -> str:
    """Return the cooldown stage's note, ``since_s`` seconds into a ``cooldown_s`` cooldown."""
    if up:
        return f"scale-up cooldown: {since_s:g}s of {cooldown_s:g}s since last scale-up"
    return f"scale-down cooldown: {since_s:g}s of {cooldown_s:g}s since change"


def _bounds(
    behavior: Behavior,
    min_capacity: int,
    max_capacity: int,
    current: int,
    idle_s: float | None,
    woken: bool,
    value: int,
) -> tuple[int, str]:
    scales_to_zero = min_capacity == 0 and max_capacity > 0
    if min_capacity <= value <= max_capacity and not scales_to_zero:
        return value, ""
    bounded = min(max(value, min_capacity), max_capacity)
    clamped = bounded != value
    waits = first_sample = False
    if scales_to_zero:
        idle_enough = idle_s is not None and idle_s >= behavior.scale_to_zero_after_s
        if bounded == 0 and current > 0 and not idle_enough:
            bounded = 1
            waits = True
        if bounded == 0 and current == 0 and woken:
            bounded = 1
            first_sample = True
    note = describe_bounds(behavior, min_capacity, max_capacity, clamped, waits, first_sample)
    return bounded, note


def describe_bounds(
    behavior: Behavior,
    min_capacity: int,
    max_capacity: int,
    clamped: bool,
    waits: bool,
    first_sample: bool,
) -> str:
    """Return the bounds stage's note.

    ``clamped``: the value was outside the bounds. ``waits``: a scale to zero waits for the
    idle time. ``first_sample``: a positive sample at zero capacity brought back one instance.
    """
    notes = []
    if clamped:
        notes.append(f"clamped to [{min_capacity}, {max_capacity}]")
    if waits:
        notes.append(f"scale to zero waits for {behavior.scale_to_zero_after_s:g}s idle")
    if first_sample:
        notes.append("first positive sample at zero capacity")
    return "; ".join(notes)

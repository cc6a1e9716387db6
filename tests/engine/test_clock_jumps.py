"""Properties of the engine's decisions while its clock steps forward and back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from warmstart.engine import STAGES, Behavior, Engine, ScalingRules

from .helpers import START, SteppedClock, tracking_spec

SCALE_DOWN_COOLDOWN_S = 120.0

BEHAVIOR = Behavior(
    scale_up=ScalingRules(0.0, ()),
    scale_down=ScalingRules(0.0, (), cooldown_s=SCALE_DOWN_COOLDOWN_S),
    tolerance=0.0,
    restart_hold_s=0.0,
)

# Clock moves between two evaluations: the usual second, a step forward, or a step back.
CLOCK_MOVES_S = st.one_of(
    st.floats(0.5, 5.0),
    st.floats(100.0, 2000.0),
    st.floats(-900.0, -1.0),
)


@given(
    steps=st.lists(
        st.tuples(CLOCK_MOVES_S, st.floats(0.0, 500.0)),
        min_size=1,
        max_size=60,
    ),
    min_capacity=st.integers(0, 3),
    max_capacity=st.integers(3, 30),
)
def test_decisions_hold_invariants_under_clock_steps(steps, min_capacity, max_capacity):
    clock = SteppedClock(START)
    spec = tracking_spec(
        behavior=BEHAVIOR,
        min_capacity=min_capacity,
        max_capacity=max_capacity,
        initial_capacity=max_capacity,
    )
    engine = Engine([spec], clock=clock, emit="all")
    decisions = []
    for move_s, load in steps:
        clock.reading += move_s
        engine.ingest("llm", "concurrency", "i0", clock.now(), load)
        decisions.extend(engine.tick())

    last_change_at = None
    current = max_capacity
    for decision in decisions:
        assert type(decision.desired) is int
        assert min_capacity <= decision.desired <= max_capacity
        names = [stage.name for stage in decision.stages]
        assert names == [name for name in STAGES if name in names]
        assert decision.stages[-1].value == decision.desired
        if decision.desired < current and last_change_at is not None:
            # A scale-down waits out the cooldown after the last change, measured on the
            # engine clock; a step back makes it wait longer, never shorter.
            assert decision.at >= last_change_at + SCALE_DOWN_COOLDOWN_S
        if decision.desired != current:
            last_change_at = decision.at
            current = decision.desired

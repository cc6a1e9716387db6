"""Tests for decision records."""

from __future__ import annotations

import pytest

from warmstart.engine import Decision, Recommendation, Stage


def make(current, desired):
    return Decision(
        endpoint="llm",
        at=12.0,
        current=current,
        desired=desired,
        policy="p",
        reason="because",
        stages=(Stage("raw", desired, ""), Stage("bounds", desired, "clamped")),
        recommendations=(Recommendation("p", desired, True, "load 50", False),),
    )


@pytest.mark.parametrize(
    ("current", "desired", "direction"), [(2, 5, "up"), (5, 2, "down"), (3, 3, "hold")]
)
def test_direction_and_changed(current, desired, direction):
    decision = make(current, desired)
    assert decision.direction == direction
    assert decision.changed == (direction != "hold")


def test_explain_lists_stages_and_recommendations():
    text = make(2, 5).explain()
    assert text.splitlines()[0] == "llm at 12.000s: because"
    assert "bounds" in text
    assert "policy p: 5 (scale-down blocked): load 50" in text


def test_unknown_stage_raises_key_error():
    with pytest.raises(KeyError):
        make(1, 1).stage("nope")

"""Tests for instance lifecycle tracking."""

from __future__ import annotations

from warmstart.engine import InstanceEvent
from warmstart.engine.instances import InstanceTracker


def test_phases_are_counted():
    tracker = InstanceTracker()
    tracker.apply("a", InstanceEvent.LAUNCHED, 0.0)
    tracker.apply("b", InstanceEvent.LAUNCHED, 0.0)
    tracker.apply("b", InstanceEvent.READY, 30.0)
    tracker.apply("c", InstanceEvent.DRAINING, 30.0)
    assert (tracker.starting, tracker.ready, tracker.draining) == (1, 1, 1)
    tracker.apply("c", InstanceEvent.GONE, 40.0)
    assert tracker.draining == 0


def test_time_to_ready_is_median_of_recent():
    tracker = InstanceTracker(configured_s=99.0, keep=3)
    assert tracker.time_to_ready_s == 99.0
    for index, seconds in enumerate([10.0, 400.0, 20.0, 30.0]):
        tracker.apply(f"i{index}", InstanceEvent.LAUNCHED, 0.0)
        tracker.apply(f"i{index}", InstanceEvent.READY, seconds)
    assert tracker.time_to_ready_s == 30.0


def test_ready_without_launch_is_not_measured():
    tracker = InstanceTracker()
    tracker.apply("a", InstanceEvent.READY, 5.0)
    assert tracker.time_to_ready_s is None
    assert tracker.ready == 1

"""Tests for the fake clock used by tests and replay."""

from __future__ import annotations

import asyncio

import pytest

from warmstart.engine import FakeClock, MonotonicClock


def test_fake_clock_moves_only_when_told():
    clock = FakeClock(5.0)
    assert clock.now() == 5.0
    clock.advance(2.5)
    assert clock.now() == 7.5


@pytest.mark.parametrize(("method", "value"), [("advance", -1.0), ("set", 4.0)])
def test_fake_clock_never_moves_backwards(method, value):
    clock = FakeClock(5.0)
    with pytest.raises(ValueError, match=r"backwards|>= 0"):
        getattr(clock, method)(value)


def test_sleepers_wake_in_deadline_order():
    async def scenario():
        clock = FakeClock(0.0)
        woke = []

        async def sleeper(deadline):
            await clock.sleep_until(deadline)
            woke.append(deadline)

        tasks = [asyncio.create_task(sleeper(d)) for d in (3.0, 1.0, 2.0)]
        await asyncio.sleep(0)
        assert clock.next_deadline() == 1.0
        clock.advance(2.0)
        for _ in range(3):
            await asyncio.sleep(0)
        assert woke == [1.0, 2.0]
        clock.advance(1.0)
        await asyncio.gather(*tasks)
        return woke

    assert asyncio.run(scenario()) == [1.0, 2.0, 3.0]


def test_past_deadline_returns_at_once():
    async def scenario():
        clock = FakeClock(10.0)
        await clock.sleep_until(5.0)
        return clock.pending_sleepers

    assert asyncio.run(scenario()) == 0


def test_monotonic_clock_does_not_go_back():
    clock = MonotonicClock()
    first = clock.now()
    assert clock.now() >= first

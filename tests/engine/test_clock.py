"""Tests for the live clocks and the fake clock used by tests and replay."""

from __future__ import annotations

import asyncio
import time

import pytest

from warmstart.engine import FakeClock, MonotonicClock, WallClock


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


def test_wall_clock_reads_unix_time():
    before = time.time()
    reading = WallClock().now()
    after = time.time()
    assert before <= reading <= after


def test_wall_clock_sleeps_until_deadline():
    async def scenario():
        clock = WallClock()
        deadline = clock.now() + 0.02
        await clock.sleep_until(deadline)
        return clock.now() - deadline

    assert asyncio.run(scenario()) >= 0.0


def test_wall_clock_past_deadline_returns_at_once():
    async def scenario():
        clock = WallClock()
        started = time.monotonic()
        await clock.sleep_until(clock.now() - 3600.0)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0

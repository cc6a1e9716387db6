"""Tests for the clock the server runs its engine on."""

from __future__ import annotations

import warmstart.engine
import warmstart.server
from warmstart.server.clock import WallClock


def test_server_clock_is_engine_wall_clock():
    assert WallClock is warmstart.engine.WallClock
    assert warmstart.server.WallClock is warmstart.engine.WallClock

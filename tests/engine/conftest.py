"""Hypothesis settings and fixtures for engine tests."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from warmstart.engine import FakeClock

from .helpers import START

settings.register_profile(
    "engine", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.load_profile("engine")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)

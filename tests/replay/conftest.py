"""Fixtures for replay tests: the real traces and small profiles with hand-checkable numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import IN_CI, SHARED_DATA
from warmstart.replay import parse_profile
from warmstart.replay.profile import Profile


@pytest.fixture(scope="session")
def traces() -> Path:
    """The real traces (``shared/data/traces``); CI fails instead of skipping without them."""
    path = SHARED_DATA / "traces"
    if not path.is_dir():
        message = f"real traces not found at {path}; set WARMSTART_SHARED_DATA"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def small_profile_data() -> dict[str, dict[str, object]]:
    """Return the tables of `small_profile` as a new dict, for tests that edit them."""
    return {
        "service": {
            "slots": 1,
            "target_concurrency": 1.0,
            "prefill_tokens_per_s": 100.0,
            "decode_tokens_per_s": 10.0,
            "overhead_s": 0.0,
            "objective_ttft_s": 5.0,
        },
        "startup": {"provision_s": 10.0, "artifacts_s": 0.0, "start_s": 0.0, "health_s": 0.0},
        "image": {"layers": [1000]},
        "registry": {"connection_bytes_per_s": 100.0},
        "mirror": {"connection_bytes_per_s": 1000.0},
        "pull": {"puller": "containerd"},
    }


def small_profile(**changes: object) -> Profile:
    """Return a profile with round numbers: 1 slot, target 1, a 10 s provision and a 1000 B
    image pulled at 100 B/s by containerd (10 s), no unpack time and no jitter."""
    data = small_profile_data()
    for key, value in changes.items():
        table, name = key.split("__")
        data[table][name] = value
    return parse_profile(data, "small profile")

"""Profiles: the shipped ones load, and bad values are rejected with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.replay.conftest import small_profile
from warmstart.replay import CacheMode, ProfileError, builtin_profiles, load_profile
from warmstart.replay.image import Puller


def test_shipped_profiles_load() -> None:
    names = builtin_profiles()

    assert "default" in names
    assert "lmi-qwen3-8b-g6" in names
    for name in names:
        profile = load_profile(name)
        assert profile.time_to_ready_s() > 0


def test_mirror_is_faster_than_registry_in_shipped_profiles() -> None:
    for name in builtin_profiles():
        profile = load_profile(name)
        assert profile.time_to_ready_s(CacheMode.MIRROR) < profile.time_to_ready_s(CacheMode.COLD)


def test_shared_layer_digest_counts_once() -> None:
    layers = [
        {"size": 100, "digest": "sha256:aa"},
        {"size": 100, "digest": "sha256:aa"},
        {"size": 50, "digest": "sha256:bb"},
    ]

    profile = small_profile(image__layers=layers)

    assert profile.layers == (100, 50)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"service__slots": 0}, "service.slots must be at least 1", id="slots"),
        pytest.param({"registry__connection_bytes_per_s": -1}, "positive", id="rate"),
        pytest.param({"startup__jitter": 1.5}, "jitter must be below 1", id="jitter"),
        pytest.param({"image__layers": []}, "non-empty list", id="layers"),
        pytest.param({"pull__puller": "aria2"}, "pull.puller must be one of", id="puller"),
        pytest.param({"service__objective_ttft_s": "2s"}, "must be a number", id="type"),
    ],
)
def test_invalid_profile_value_is_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        small_profile(**change)


def test_profile_file_loads_by_path(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[2] / "python/warmstart/replay/profiles/default.toml"
    path = tmp_path / "mine.toml"
    path.write_text(source.read_text().replace('puller = "chunked"', 'puller = "containerd"'))

    profile = load_profile(path)

    assert profile.puller is Puller.CONTAINERD


def test_unknown_profile_lists_choices() -> None:
    with pytest.raises(ProfileError, match="default"):
        load_profile("no-such-profile")

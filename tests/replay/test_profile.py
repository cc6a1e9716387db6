"""Profiles: the shipped ones load, and bad values are rejected with the key named."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.replay.conftest import small_profile, small_profile_data
from warmstart.replay import CacheMode, ProfileError, builtin_profiles, load_profile
from warmstart.replay.image import Puller
from warmstart.replay.profile import parse_profile
from warmstart.replay.profile_reader import MAX_LAYER_BYTES, SCHEMA
from warmstart.store import MIN_CHUNK_SIZE


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


def test_marked_config_blob_is_indexed() -> None:
    layers = [
        {"size": 100, "digest": "sha256:aa"},
        {"size": 100, "digest": "sha256:aa"},
        {"size": 5, "digest": "sha256:cc", "config": True},
        50,
    ]

    profile = small_profile(image__layers=layers, pull__puller="chunked")

    assert profile.layers == (100, 5, 50)
    assert profile.config == 1
    assert small_profile(image__layers=[100, 50]).config is None


def test_marked_config_blob_starts_first() -> None:
    options = {"pull__puller": "chunked", "pull__connections": 1}
    options["registry__unpack_bytes_per_s"] = 1000.0
    marked = small_profile(image__layers=[1000, {"size": 10, "config": True}], **options)
    unmarked = small_profile(image__layers=[1000, 10], **options)

    # One connection at 100 B/s. Marked: the config takes 0-0.1 s and the big blob 0.1-10.1 s.
    # Unmarked: the big blob takes 0-10 s and the 10 bytes 10-10.1 s. Unpacking follows the
    # list, 1 s for the big blob and 0.01 s for the config.
    assert marked.image_times().download_s == pytest.approx(10.1)
    assert marked.image_times().total_s == pytest.approx(11.11)
    assert unmarked.image_times().download_s == pytest.approx(10.1)
    assert unmarked.image_times().total_s == pytest.approx(11.01)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        pytest.param(
            [{"size": 1, "config": True}, {"size": 2, "config": True}],
            r"image.layers\[1\] is a second config blob",
            id="two-configs",
        ),
        pytest.param(
            [{"size": 1, "config": "yes"}],
            r"image.layers\[0\].config must be true or false, got 'yes'",
            id="not-bool",
        ),
    ],
)
def test_invalid_config_mark_is_named(layers: list[object], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        small_profile(image__layers=layers)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"service__slots": 0}, "service.slots must be from 1", id="slots"),
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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"service__slots": 1.9}, "service.slots must be a whole number", id="slots"),
        pytest.param({"service__slots": math.inf}, "service.slots must be a whole", id="inf"),
        pytest.param({"pull__connections": 1.5}, "pull.connections must be a whole", id="conn"),
        pytest.param({"pull__connections": 100_000}, "pull.connections must be from", id="many"),
        pytest.param({"pull__chunk_size": 4096.0}, "pull.chunk_size must be a whole", id="chunk"),
    ],
)
def test_count_must_be_whole_number(change: dict[str, object], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        small_profile(**change)


def test_unknown_key_is_named_with_suggestion() -> None:
    with pytest.raises(ProfileError, match=r"startup.provison_s; did you mean 'provision_s'"):
        small_profile(startup__provison_s=5.0)


def test_unknown_table_is_named_with_suggestion(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[2] / "python/warmstart/replay/profiles/default.toml"
    path = tmp_path / "typo.toml"
    path.write_text(source.read_text().replace("[mirror]", "[mirorr]"))

    with pytest.raises(ProfileError, match=r"'mirorr'; did you mean 'mirror'") as caught:
        load_profile(path)
    assert str(path) in str(caught.value)


_KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20)


@given(table=st.sampled_from(sorted(SCHEMA)), key=_KEY)
def test_any_unknown_key_is_rejected(table: str, key: str) -> None:
    data: dict[str, Any] = small_profile_data()
    if key in SCHEMA[table]:
        return
    if table:
        data[table][key] = 1
    else:
        data[key] = 1

    with pytest.raises(ProfileError) as caught:
        parse_profile(data)
    assert "unknown key" in str(caught.value)
    assert key in str(caught.value)


@pytest.mark.parametrize(
    "key",
    [
        "startup__provision_s",
        "startup__health_s",
        "service__overhead_s",
        "service__decode_tokens_per_s",
        "registry__connection_bytes_per_s",
        "registry__first_byte_s",
    ],
)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_time_or_rate_must_be_finite(key: str, value: float) -> None:
    with pytest.raises(ProfileError, match=f"{key.replace('__', '.')} must be a finite number"):
        small_profile(**{key: value})


def test_tiny_token_rate_is_rejected() -> None:
    with pytest.raises(ProfileError, match=r"decode_tokens_per_s must be at least 0\.001"):
        small_profile(service__decode_tokens_per_s=1e-300)


def test_network_cap_may_be_infinite() -> None:
    profile = small_profile(registry__node_bytes_per_s=math.inf)

    assert profile.registry.node_bytes_per_s == math.inf


def test_chunk_size_below_store_minimum() -> None:
    small_profile(pull__chunk_size=MIN_CHUNK_SIZE)
    with pytest.raises(ProfileError, match=f"pull.chunk_size must be from {MIN_CHUNK_SIZE}"):
        small_profile(pull__chunk_size=1024)


def test_huge_layer_is_rejected() -> None:
    with pytest.raises(ProfileError, match=r"image.layers\[0\] is 9200000000000000000 bytes"):
        small_profile(image__layers=[9_200_000_000_000_000_000])
    small_profile(image__layers=[MAX_LAYER_BYTES])


def test_too_many_ranges_is_rejected() -> None:
    with pytest.raises(ProfileError, match=r"raise pull\.chunk_size"):
        small_profile(
            pull__puller="chunked", pull__chunk_size=MIN_CHUNK_SIZE, image__layers=[1 << 40]
        )


@pytest.mark.parametrize("key", ["name", "description"])
def test_name_must_be_string(key: str) -> None:
    data: dict[str, Any] = small_profile_data()
    data[key] = {"a": 1}

    with pytest.raises(ProfileError, match=f"{key} must be a string"):
        parse_profile(data)


def test_binary_profile_is_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")

    with pytest.raises(ProfileError, match="invalid UTF-8") as caught:
        load_profile(path)
    assert str(path) in str(caught.value)

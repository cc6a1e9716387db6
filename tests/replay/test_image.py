"""The image-stage model against hand-computed transfers, and its lower bounds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.replay import Network, Puller, fit_connection_rate, load_profile, pull_times
from warmstart.replay.image import download_times, transfer_times


def test_transfers_one_at_a_time_wait_for_each_other() -> None:
    network = Network(connection_bytes_per_s=10.0, first_byte_s=1.0)

    finish = transfer_times([100, 100], at_once=1, network=network)

    assert finish == pytest.approx([11.0, 22.0])


def test_node_cap_is_shared_by_flowing_transfers() -> None:
    network = Network(connection_bytes_per_s=10.0, node_bytes_per_s=10.0, first_byte_s=1.0)

    finish = transfer_times([100, 100], at_once=2, network=network)

    # Both flow from 1 s at 5 B/s each.
    assert finish == pytest.approx([21.0, 21.0])


def test_hash_rate_caps_like_the_node() -> None:
    network = Network(connection_bytes_per_s=10.0, hash_bytes_per_s=10.0)

    assert transfer_times([100, 100], at_once=2, network=network) == pytest.approx([20.0, 20.0])


def test_containerd_pulls_three_layers_at_once() -> None:
    network = Network(connection_bytes_per_s=10.0)

    times = pull_times([100, 100, 100, 100], network, Puller.CONTAINERD)

    # Three layers take 10 s together; the fourth starts when they end.
    assert times.download_s == pytest.approx(20.0)


def test_chunked_pull_splits_one_layer_over_connections() -> None:
    network = Network(connection_bytes_per_s=10.0, first_byte_s=0.5)

    times = pull_times([100], network, Puller.CHUNKED, connections=4, chunk_size=25)

    # 0.5 s for the manifest, then four 25-byte ranges at once: 0.5 s to first byte, 2.5 s.
    assert times.download_s == pytest.approx(3.5)


def test_chunked_pull_requests_every_blob_before_more_ranges() -> None:
    network = Network(connection_bytes_per_s=10.0)

    done = download_times(
        [100, 10, 10], [False] * 3, Puller.CHUNKED, network, connections=2, chunk_size=50
    )

    # Two connections: the big blob's first range (0-5 s), the small blobs (0-1 s, 1-2 s),
    # then the big blob's second range (2-7 s).
    assert done == pytest.approx([7.0, 1.0, 2.0])


def test_chunked_pull_starts_config_blob_first() -> None:
    network = Network(connection_bytes_per_s=10.0)
    layers = [100, 10, 50]

    with_config = download_times(
        layers, [False] * 3, Puller.CHUNKED, network, connections=1, chunk_size=1000, config=1
    )
    without_config = download_times(
        layers, [False] * 3, Puller.CHUNKED, network, connections=1, chunk_size=1000
    )

    # One connection: the 10-byte config (0-1 s), then largest first: 100 bytes (1-11 s) and
    # 50 bytes (11-16 s). Without a config every blob goes by size, so the 10 bytes go last.
    assert with_config == pytest.approx([11.0, 1.0, 16.0])
    assert without_config == pytest.approx([10.0, 16.0, 15.0])


@pytest.mark.parametrize("config", [-1, 3], ids=["negative", "past-end"])
def test_config_index_outside_layers_is_rejected(config: int) -> None:
    with pytest.raises(ValueError, match=f"config index {config} is outside the 3 layers"):
        download_times([1, 2, 3], [False] * 3, Puller.CHUNKED, Network(1.0), config=config)


def test_warm_pull_costs_one_manifest_request() -> None:
    network = Network(connection_bytes_per_s=10.0, first_byte_s=0.25, unpack_bytes_per_s=100.0)

    times = pull_times([100, 50], network, Puller.CHUNKED, present=[True, True])

    assert times.download_s == pytest.approx(0.25)
    assert times.total_s == pytest.approx(0.25 + 1.5)


def test_unpack_runs_layer_by_layer_in_order() -> None:
    network = Network(connection_bytes_per_s=1e12, unpack_bytes_per_s=50.0)

    times = pull_times([100, 100], network, Puller.CONTAINERD)

    assert times.total_s == pytest.approx(4.0, abs=1e-6)


def test_layers_in_store_cost_only_their_unpack() -> None:
    network = Network(connection_bytes_per_s=1.0, unpack_bytes_per_s=50.0)

    times = pull_times([100, 50], network, Puller.CHUNKED, present=[True, True])

    assert times.download_s == 0.0
    assert times.total_s == pytest.approx(3.0)


def test_fit_connection_rate_reproduces_target() -> None:
    layers = [300, 2000, 50]
    network = Network(connection_bytes_per_s=1.0, first_byte_s=0.1, unpack_bytes_per_s=500.0)

    rate = fit_connection_rate(layers, 30.0, network)
    fitted = Network(rate, first_byte_s=0.1, unpack_bytes_per_s=500.0)

    assert pull_times(layers, fitted).total_s == pytest.approx(30.0, rel=1e-6)


def test_fit_connection_rate_rejects_unreachable_target() -> None:
    network = Network(connection_bytes_per_s=1.0, unpack_bytes_per_s=10.0)

    with pytest.raises(ValueError, match="unpack"):
        fit_connection_rate([1000], 50.0, network)


def test_lmi_profile_reproduces_published_scale_out() -> None:
    profile = load_profile("lmi-qwen3-8b-g6")

    cold = profile.stage_times()
    without_image = sum(v for stage, v in cold.items() if stage != "image")

    assert sum(cold.values()) == pytest.approx(525.0, abs=1.0)
    assert without_image == pytest.approx(258.0)
    assert sum(profile.layers) > 17e9


@settings(max_examples=60, deadline=None)
@given(
    layers=st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
    connections=st.integers(1, 12),
    chunk_size=st.integers(1000, 10**6),
    rate=st.floats(1e3, 1e7),
    cap=st.floats(1e3, 1e8),
    first_byte_s=st.floats(0.0, 0.5),
)
def test_download_never_beats_bandwidth_or_latency(
    layers: list[int],
    connections: int,
    chunk_size: int,
    rate: float,
    cap: float,
    first_byte_s: float,
) -> None:
    network = Network(rate, node_bytes_per_s=cap, first_byte_s=first_byte_s)

    for puller in Puller:
        lanes = connections if puller is Puller.CHUNKED else 3
        times = pull_times(layers, network, puller, connections=connections, chunk_size=chunk_size)
        floor = sum(layers) / min(cap, lanes * rate)
        assert times.download_s >= floor * (1 - 1e-9)
        # The manifest request, then at least one blob request, each waits for its first byte.
        assert times.download_s >= first_byte_s * (2 if sum(layers) else 1) * (1 - 1e-9)
        assert times.total_s >= times.download_s
        assert math.isfinite(times.total_s)

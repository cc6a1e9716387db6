"""``warmstart calibrate`` against a real registry on loopback, and the fit on its own."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import tomllib
from pathlib import Path

import pytest
from benchmarks.throttle_proxy import ThrottleProxy
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.registry.layout import tar_layer
from tests.registry.real import RegistryRepository
from warmstart import LayerStore
from warmstart.cli import main
from warmstart.replay import Network, load_profile, parse_profile, pull_times
from warmstart.replay.calibrate import (
    Calibration,
    calibrate,
    fit_network,
    fit_size_warning,
    profile_toml,
)
from warmstart.replay.image import Puller, download_times

MIB = 1 << 20


def test_fit_recovers_rate() -> None:
    # 3 connections at 1000 B/s with 0.2 s to first byte. The 3000-byte blob waits for the
    # 1000-byte one, so its connection has made 2 requests and moved 4000 bytes by its end.
    sizes = [8000, 5000, 1000, 3000, 10]
    seconds = [0.2 + 8.0, 0.2 + 5.0, 0.2 + 1.0, 0.4 + 4.0, 0.6 + 4.01]

    network = fit_network(sizes, seconds, Network(1.0), first_byte_s=0.2)

    assert network.connection_bytes_per_s == pytest.approx(1000.0)
    assert network.first_byte_s == 0.2


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(1_000, 10**8), min_size=1, max_size=25),
    rate=st.floats(1e5, 1e9),
    first_byte_s=st.floats(0.0, 0.2),
)
def test_fit_inverts_the_containerd_model(
    sizes: list[int], rate: float, first_byte_s: float
) -> None:
    # Blob times from the model itself, one connection per blob, 3 at a time, in this order.
    network = Network(rate, first_byte_s=first_byte_s)
    seconds = download_times(sizes, [False] * len(sizes), Puller.CONTAINERD, network)

    fitted = fit_network(sizes, seconds, Network(1.0), first_byte_s=first_byte_s)

    assert fitted.connection_bytes_per_s == pytest.approx(rate, rel=1e-6)


def test_fit_of_measured_pull_matches_largest_blob() -> None:
    # Per-blob seconds of a containerd-style pull (3 connections) of a generated 1.6 GB image
    # through the throttling proxy at 50 MB/s, from benchmarks/calibrate_bench.py on a 2-core
    # VM. The three smallest blobs ended up to 0.16 s late, with the 384 MiB blob.
    sizes = [805306368, 402653184, 201326592, 100663296, 50331648, 25165824, 12582912]
    sizes += [6291456, 3145728, 1572864, 1577]
    seconds = [16.461, 8.287, 4.158, 6.136, 7.135, 7.638, 7.900, 8.046, 8.287, 8.286, 8.286]
    first_byte_s = 0.0229

    network = fit_network(sizes, seconds, Network(1.0), first_byte_s=first_byte_s)

    # The largest blob had its connection to itself, so its rate is the connection's.
    largest_rate = sizes[0] / (seconds[0] - first_byte_s)
    assert network.connection_bytes_per_s == pytest.approx(largest_rate, rel=0.02)


def test_fit_needs_a_blob_slower_than_first_byte() -> None:
    with pytest.raises(ValueError, match="no blob took longer"):
        fit_network([100, 0], [0.05, 1.0], Network(1.0), first_byte_s=0.1)


def test_calibrate_writes_profile_with_pulled_sizes(
    registry_repo: RegistryRepository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sizes = [3 * MIB, 1 * MIB, 200_000]
    registry_repo.push_generated("v1", [os.urandom(size) for size in sizes], compress=False)
    output = tmp_path / "calibrated.toml"
    reference = f"{registry_repo.reference_prefix}:v1"

    status = main(
        ["calibrate", reference, "--chunk-size", "256k", "--repeat", "2", "--output", str(output)]
    )

    printed = capsys.readouterr().out
    profile = load_profile(output)
    assert status == 0
    assert "containerd" in printed
    # The pulled blobs are the three layers and the config, which the store reports first.
    assert sorted(profile.layers)[-3:] == sorted(sizes)
    assert len(profile.layers) == 4
    assert profile.config == 0
    assert profile.layers[0] not in sizes
    assert profile.registry.connection_bytes_per_s > 0


def _pull_seconds(reference: str, store: Path, connections: int, chunk_size: int) -> float:
    async def pull() -> float:
        report = await LayerStore(store).pull(
            reference,
            connections=connections,
            chunk_size=chunk_size,
            insecure_registries=[reference.split("/", 1)[0]],
        )
        return report.seconds

    return asyncio.run(pull())


def test_model_predicts_other_image_within_15_percent(
    registry_repo: RegistryRepository, tmp_path: Path
) -> None:
    # 4 MB/s and 20 ms to first byte per connection, as an object store behind a registry.
    rate = 4_000_000
    # The fit image has blobs of many sizes, so its containerd pull separates the first-byte
    # time from the rate. The checked image has other sizes and more, smaller blobs.
    fit_sizes = [12 * MIB, 6 * MIB, 3 * MIB, 1536 * 1024, 768 * 1024, 384 * 1024]
    check_sizes = [8 * MIB, 2 * MIB, *[MIB] * 4, *[512 * 1024] * 4, 256 * 1024]
    registry_repo.push_generated("fit", [os.urandom(n) for n in fit_sizes], compress=False)
    checked = registry_repo.push_generated(
        "check", [os.urandom(n) for n in check_sizes], compress=False
    )
    assert checked.config is not None
    port = registry_repo.registry.port
    with ThrottleProxy("127.0.0.1", port, rate_bytes_per_s=rate, first_byte_delay_s=0.02) as proxy:
        prefix = f"{proxy.host}/{registry_repo.name}"
        # Declared plain HTTP, as for any such registry, so no TLS probe adds to the
        # manifest request that gives the first-byte time.
        calibration = asyncio.run(
            calibrate(
                f"{prefix}:fit",
                load_profile(),
                connections=8,
                chunk_size=2 * MIB,
                insecure=True,
            )
        )
        # Each pull runs twice into fresh stores and the faster counts, since a stall on a
        # loaded machine only ever adds time.
        measured = {
            (puller, lanes, chunk): min(
                _pull_seconds(
                    f"{prefix}:check", tmp_path / f"{puller.value}-{lanes}-{run}", lanes, chunk
                )
                for run in range(2)
            )
            for puller, lanes, chunk in [
                (Puller.CONTAINERD, 3, 1 << 50),
                (Puller.CHUNKED, 8, 2 * MIB),
                (Puller.CHUNKED, 3, 4 * MIB),
            ]
        }

    assert calibration.warnings == ()
    network = dataclasses.replace(calibration.network, unpack_bytes_per_s=math.inf)
    # The layer store starts the config blob first and the others largest first, so the
    # model gets them in that order.
    layers = [checked.config.size, *sorted(check_sizes, reverse=True)]
    assert calibration.network.connection_bytes_per_s == pytest.approx(rate, rel=0.15)
    for (puller, lanes, chunk), seconds in measured.items():
        modeled = pull_times(
            layers, network, puller, connections=lanes, chunk_size=chunk, config=0
        ).download_s
        assert modeled == pytest.approx(seconds, rel=0.15), (puller, lanes, chunk)


@pytest.mark.parametrize(
    ("fitted_rate", "base_rate", "fitted_bytes", "needed"),
    [
        pytest.param(4e6, 1e6, 3_000_000, 3_000_000, id="fitted-rate-enough"),
        pytest.param(4e6, 1e6, 2_999_999, 3_000_000, id="fitted-rate-short"),
        # A rate dragged down by fixed costs is not trusted to size the image.
        pytest.param(20.0, 8e6, 5_999_999, 6_000_000, id="base-rate-short"),
    ],
)
def test_fit_size_warning_threshold(
    fitted_rate: float, base_rate: float, fitted_bytes: int, needed: int
) -> None:
    warning = fit_size_warning(fitted_bytes, 2, Network(fitted_rate), Network(base_rate))

    if fitted_bytes >= needed:
        assert warning is None
    else:
        assert warning is not None
        assert f"the image has {fitted_bytes:,} bytes in 2 blobs" in warning
        assert f"needs at least {needed / 1e6:.1f} MB" in warning
        assert "calibrate with a larger image" in warning


def test_calibrate_warns_on_small_image(
    registry_repo: RegistryRepository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry_repo.push_generated("v1", [b"tiny layer"], compress=False)
    output = tmp_path / "calibrated.toml"
    reference = f"{registry_repo.reference_prefix}:v1"

    status = main(["calibrate", reference, "--json", "--output", str(output)])

    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert status == 0
    assert len(document["warnings"]) == 1
    assert "a reliable fit needs at least" in document["warnings"][0]
    assert f"warmstart: warning: {document['warnings'][0]}" in captured.err
    assert "# WARNING: the image has" in output.read_text()


def test_calibrate_measures_unpack_rate(registry_repo: RegistryRepository) -> None:
    layers = [tar_layer({f"lib/file{i}.bin": os.urandom(256 * 1024) for i in range(8)})]
    registry_repo.push_generated("v1", layers)
    reference = f"{registry_repo.reference_prefix}:v1"
    calibration = asyncio.run(calibrate(reference, load_profile(), connections=2, chunk_size=MIB))
    assert math.isfinite(calibration.network.unpack_bytes_per_s)
    assert calibration.network.unpack_bytes_per_s > 0


def test_calibrate_keeps_base_unpack_rate_for_non_tar_layers(
    registry_repo: RegistryRepository,
) -> None:
    registry_repo.push_generated("v1", [os.urandom(100_000)], compress=False)
    reference = f"{registry_repo.reference_prefix}:v1"
    base = load_profile()
    calibration = asyncio.run(calibrate(reference, base, connections=2, chunk_size=MIB))
    assert calibration.network.unpack_bytes_per_s == base.registry.unpack_bytes_per_s


def test_calibrate_calls_before_pull_and_times_blobs(
    registry_repo: RegistryRepository,
) -> None:
    sizes = [2 * MIB, 300_000]
    registry_repo.push_generated("v1", [os.urandom(size) for size in sizes], compress=False)
    reference = f"{registry_repo.reference_prefix}:v1"
    calls: list[int] = []

    calibration = asyncio.run(
        calibrate(
            reference,
            load_profile(),
            connections=2,
            chunk_size=MIB,
            repeat=2,
            before_pull=lambda: calls.append(1),
        )
    )

    # Two fit strategies pulled twice each, then the check pull and the warm pull.
    assert len(calls) == 6
    assert len(calibration.fit_blob_seconds) == len(calibration.layers)
    assert all(seconds > 0 for seconds in calibration.fit_blob_seconds)


def test_calibrated_profile_names_its_reference() -> None:
    base = dataclasses.replace(load_profile(), description='Base "8.8 GB image"')
    calibration = Calibration(
        reference="127.0.0.1:5000/llm:v1",
        network=dataclasses.replace(base.registry, node_bytes_per_s=math.inf),
        layers=(2_000_000, 500),
        measurements=(),
    )

    profile = parse_profile(tomllib.loads(profile_toml(base, calibration, "default")))

    assert profile.name == "default-calibrated"
    assert "8.8 GB" not in profile.description
    assert profile.description.startswith("Calibrated from 127.0.0.1:5000/llm:v1: 2 blobs")
    assert profile.layers == (2_000_000, 500)
    assert profile.registry.node_bytes_per_s == math.inf

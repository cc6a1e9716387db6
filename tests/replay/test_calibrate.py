"""``warmstart calibrate`` against a real registry on loopback, and the fit on its own."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

import pytest
from benchmarks.throttle_proxy import ThrottleProxy

from tests.registry.layout import tar_layer
from tests.registry.real import RegistryRepository
from warmstart.cli import main
from warmstart.replay import Network, load_profile
from warmstart.replay.calibrate import calibrate, fit_network
from warmstart.replay.image import Puller

MIB = 1 << 20


def test_fit_recovers_rate_and_first_byte() -> None:
    # A 10-byte config blob takes the first-byte time; the 20000-byte blob waited 3 s for a
    # connection, so it looks slower than the rate it moved at.
    sizes = [10, 5000, 20000]
    seconds = [0.2, 0.2 + 5000 / 1000, 3.0 + 0.2 + 20000 / 1000]

    network = fit_network(sizes, seconds, Network(1.0))

    assert network.connection_bytes_per_s == pytest.approx(1000.0)
    assert network.first_byte_s == pytest.approx(0.2)


def test_fit_of_one_blob_has_no_first_byte() -> None:
    network = fit_network([2000], [2.0], Network(1.0))

    assert network.first_byte_s == 0.0
    assert network.connection_bytes_per_s == pytest.approx(1000.0)


def test_fit_needs_a_timed_blob() -> None:
    with pytest.raises(ValueError, match="no blob"):
        fit_network([0], [0.0], Network(1.0))


def test_calibrate_writes_profile_with_pulled_sizes(
    registry_repo: RegistryRepository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sizes = [3 * MIB, 1 * MIB, 200_000]
    registry_repo.push_generated("v1", [os.urandom(size) for size in sizes], compress=False)
    output = tmp_path / "calibrated.toml"
    reference = f"{registry_repo.reference_prefix}:v1"

    status = main(["calibrate", reference, "--chunk-size", "256k", "--output", str(output)])

    printed = capsys.readouterr().out
    profile = load_profile(output)
    assert status == 0
    assert "containerd" in printed
    # The pulled blobs are the three layers and the config.
    assert sorted(profile.layers)[-3:] == sorted(sizes)
    assert len(profile.layers) == 4
    assert profile.registry.connection_bytes_per_s > 0


def test_model_within_15_percent_through_throttling_proxy(
    registry_repo: RegistryRepository,
) -> None:
    # 4 MB/s and 20 ms to first byte per connection, as an object store behind a registry.
    rate = 4_000_000
    sizes = [24 * MIB, 12 * MIB, 6 * MIB, 3 * MIB]
    registry_repo.push_generated("v1", [os.urandom(size) for size in sizes], compress=False)
    port = registry_repo.registry.port
    with ThrottleProxy("127.0.0.1", port, rate_bytes_per_s=rate, first_byte_delay_s=0.02) as proxy:
        reference = f"{proxy.host}/{registry_repo.name}:v1"
        calibration = asyncio.run(
            calibrate(reference, load_profile(), connections=8, chunk_size=4 * MIB)
        )

    fit, check = (
        {m.puller: m for m in calibration.measurements if m.name == name}
        for name in ("fit", "check")
    )
    # The fit pulls match by construction; the check pull, with other connections and
    # ranges, is a prediction.
    assert abs(fit[Puller.CONTAINERD].error) <= 0.01
    assert abs(check[Puller.CHUNKED].error) <= 0.15, check[Puller.CHUNKED]
    assert calibration.network.connection_bytes_per_s == pytest.approx(rate, rel=0.15)
    assert math.isfinite(calibration.network.first_byte_s)


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

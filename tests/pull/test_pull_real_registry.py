"""Pulls from the real CNCF distribution registry on loopback, compared byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from benchmarks.throttle_proxy import ThrottleProxy

from tests.conftest import require_tool
from tests.pull.helpers import pull, real_file_layer
from tests.registry.layout import tar_layer
from tests.registry.real import RegistryRepository, http_request
from warmstart import LayerStore, errors


def registry_bytes(repo: RegistryRepository, digest: str) -> bytes:
    return http_request("GET", repo.blob_url(digest)).body


def test_pull_is_byte_identical_and_readable_by_skopeo(
    store: LayerStore, registry_repo: RegistryRepository
) -> None:
    skopeo = require_tool("skopeo")
    layers = [real_file_layer(2 << 20), tar_layer({"app/main.py": b"print('hi')\n"})]
    image = registry_repo.push_generated("v1", layers)
    report = pull(store, f"{registry_repo.reference_prefix}:v1")
    assert report.manifest_digest == image.digest
    assert report.bytes_reused == 0
    pulled = {blob.digest for blob in report.blobs}
    assert pulled == {layer.digest for layer in image.layers} | {image.config.digest}  # type: ignore[union-attr]
    for digest in pulled:
        assert store.read(digest) == registry_bytes(registry_repo, digest)
    assert store.verify().ok
    inspect = subprocess.run(
        [skopeo, "inspect", f"oci:{store.root}:{report.tag}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(inspect.stdout)["Digest"] == image.digest


def test_second_pull_fetches_nothing(store: LayerStore, registry_repo: RegistryRepository) -> None:
    registry_repo.push_generated("v1", [tar_layer({"a": os.urandom(100_000)})])
    reference = f"{registry_repo.reference_prefix}:v1"
    first = pull(store, reference)
    second = pull(store, reference)
    assert first.bytes_fetched > 0
    assert second.bytes_fetched == 0
    assert all(blob.reused for blob in second.blobs)
    assert second.bytes_reused == sum(blob.size for blob in first.blobs)


def test_report_times_the_manifest_request(
    store: LayerStore, registry_repo: RegistryRepository
) -> None:
    registry_repo.push_generated("v1", [os.urandom(1000)], compress=False)
    port = registry_repo.registry.port
    with ThrottleProxy("127.0.0.1", port, first_byte_delay_s=0.2) as proxy:
        # Declared plain HTTP, so no TLS probe comes before the manifest request.
        report = pull(
            store, f"{proxy.host}/{registry_repo.name}:v1", insecure_registries=[proxy.host]
        )

    # Every request waits 0.2 s for its first byte: the manifest's, then the blobs'.
    assert 0.2 <= report.manifest_seconds < 0.4
    assert report.seconds >= report.manifest_seconds + 0.2


def test_large_layer_is_fetched_in_ranges(
    store: LayerStore, registry_repo: RegistryRepository
) -> None:
    layer = os.urandom(3 << 20)
    image = registry_repo.push_generated("v1", [layer], compress=False)
    report = pull(store, f"{registry_repo.reference_prefix}:v1", chunk_size=256 << 10)
    (blob,) = [b for b in report.blobs if b.digest == image.layers[0].digest]
    assert blob.ranged
    assert blob.requests >= 12
    assert store.read(blob.digest) == layer


def test_index_platform_selection_skips_attestations(
    store: LayerStore, registry_repo: RegistryRepository
) -> None:
    index = registry_repo.push_index("multi", attestations=True)
    reference = f"{registry_repo.reference_prefix}:multi"
    arm = pull(store, reference, platform="linux/arm64/v8", tag="arm")
    amd = pull(store, reference, platform="linux/amd64", tag="amd")
    children = {child.digest for child in index.children}
    assert arm.index_digest == index.digest
    assert arm.manifest_digest in children
    assert amd.manifest_digest in children
    assert arm.manifest_digest != amd.manifest_digest
    with pytest.raises(errors.PlatformNotFoundError) as caught:
        pull(store, reference, platform="unknown/unknown")
    assert "available: linux/amd64, linux/arm64/v8" in str(caught.value)
    assert store.verify().ok


def test_duplicate_and_empty_layers(store: LayerStore, registry_repo: RegistryRepository) -> None:
    layer = tar_layer({"x": b"same"})
    image = registry_repo.push_generated("dup", [layer, layer, b""], compress=False)
    report = pull(store, f"{registry_repo.reference_prefix}:dup")
    digests = [blob.digest for blob in report.blobs]
    assert len(digests) == len(set(digests)), "a digest listed twice is fetched once"
    empty = [blob for blob in report.blobs if blob.size == 0]
    assert len(empty) == 1
    assert store.read(empty[0].digest) == b""
    assert store.resolve(report.tag).digest == image.digest


def test_artifact_with_custom_media_type(
    store: LayerStore, registry_repo: RegistryRepository
) -> None:
    weights = os.urandom(1 << 20)
    registry_repo.push_artifact("model", [("model.safetensors", weights)])
    report = pull(store, f"{registry_repo.reference_prefix}:model")
    media_types = {blob.media_type for blob in report.blobs}
    assert "application/vnd.warmstart.model.weights.v1.safetensors" in media_types
    (blob,) = [b for b in report.blobs if b.size == len(weights)]
    assert store.read(blob.digest) == weights


def test_real_fixture_layout_round_trip(
    store: LayerStore, registry_repo: RegistryRepository, images: Path
) -> None:
    layout = images / "regclient-testrepo" / "testrepo"
    registry_repo.push_layout(layout, "v1", "v1")
    report = pull(store, f"{registry_repo.reference_prefix}:v1")
    for blob in report.blobs:
        source = layout / "blobs" / "sha256" / blob.digest.removeprefix("sha256:")
        assert store.read(blob.digest) == source.read_bytes()


def test_missing_tag_names_the_repository(
    store: LayerStore, registry_repo: RegistryRepository
) -> None:
    with pytest.raises(errors.RegistryNotFoundError) as caught:
        pull(store, f"{registry_repo.reference_prefix}:absent")
    assert caught.value.status == 404
    assert caught.value.repository == registry_repo.name
    assert "MANIFEST_UNKNOWN" in str(caught.value)


def test_invalid_tag_fails_before_download(
    store: LayerStore, registry_repo: RegistryRepository
) -> None:
    image = registry_repo.push_generated("v1", [tar_layer({"a": os.urandom(100_000)})])

    with pytest.raises(errors.InvalidTagError, match="bad tag"):
        pull(store, f"{registry_repo.reference_prefix}:v1", tag="bad tag")

    for layer in image.layers:
        assert not store.has(layer.digest)
    assert not store.has(image.config.digest)  # type: ignore[union-attr]


def test_referrer_pull_leaves_subject_out(
    store: LayerStore, registry_repo: RegistryRepository, images: Path
) -> None:
    # Tag a1 is an SBOM artifact whose `subject` names another manifest of the layout.
    layout = images / "regclient-testrepo" / "testrepo"
    digest = registry_repo.push_layout(layout, "a1", "a1")
    manifest = json.loads(
        (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    )
    subject = manifest["subject"]["digest"]
    content = {manifest["config"]["digest"]} | {layer["digest"] for layer in manifest["layers"]}

    report = pull(store, f"{registry_repo.reference_prefix}:a1")

    assert report.manifest_digest == digest
    assert {blob.digest for blob in report.blobs} == content
    for blob in content:
        source = layout / "blobs" / "sha256" / blob.removeprefix("sha256:")
        assert store.read(blob) == source.read_bytes()
    assert not store.has(subject)
    assert store.verify().ok
    assert store.resolve(report.tag).digest == digest


def test_referrer_export_without_subject(
    store: LayerStore, registry_repo: RegistryRepository, images: Path, tmp_path: Path
) -> None:
    layout = images / "regclient-testrepo" / "testrepo"
    digest = registry_repo.push_layout(layout, "a1", "a1")
    report = pull(store, f"{registry_repo.reference_prefix}:a1")

    store.export_layout(tmp_path / "exported")
    copy = LayerStore(tmp_path / "copy")
    copy.import_layout(tmp_path / "exported")

    assert copy.resolve(report.tag).digest == digest
    assert copy.verify().ok
    assert store.gc(grace_period_s=0).removed_blob_bytes == 0

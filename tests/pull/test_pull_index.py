"""Pulls of an index: the store keeps the index, the tag names it, platforms add up."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPOSITORY
from tests.pull.helpers import pull
from tests.registry import faults
from tests.registry.fake import FakeRegistry
from tests.registry.layout import (
    DOCKER_MANIFEST_LIST,
    Content,
    build_image,
    build_index,
    canonical_json,
    tar_layer,
)
from tests.registry.real import RegistryRepository
from warmstart import LayerStore, PullReport, UnpackReport, errors

# Tag b1 of the regclient layout is an OCI index of four BuildKit images with no attestations.
B1_PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6")


def regclient_layout(images: Path) -> Path:
    return images / "regclient-testrepo" / "testrepo"


def read_blob(layout: Path, digest: str) -> dict[str, object]:
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    return dict(json.loads(path.read_bytes()))


def platform_manifests(layout: Path, index: str) -> dict[str, str]:
    """Map ``os/architecture[/variant]`` to the manifest digest of each platform of ``index``."""
    manifests: dict[str, str] = {}
    entries = read_blob(layout, index)["manifests"]
    assert isinstance(entries, list)
    for entry in entries:
        platform = entry["platform"]
        name = "/".join(
            platform[key] for key in ("os", "architecture", "variant") if key in platform
        )
        manifests[name] = entry["digest"]
    return manifests


def push_b1(registry_repo: RegistryRepository, images: Path) -> tuple[str, str, dict[str, str]]:
    """Push tag b1 with skopeo and return the reference, the index digest and its platforms."""
    layout = regclient_layout(images)
    index = registry_repo.push_layout(layout, "b1", "b1")
    return f"{registry_repo.reference_prefix}:b1", index, platform_manifests(layout, index)


def test_pulls_of_two_platforms_share_index_tag(
    store: LayerStore, registry_repo: RegistryRepository, images: Path
) -> None:
    reference, index, manifests = push_b1(registry_repo, images)

    amd = pull(store, reference, platform="linux/amd64")
    arm = pull(store, reference, platform="linux/arm64")

    assert amd.tag == arm.tag == reference
    assert amd.index_digest == arm.index_digest == index
    assert amd.manifest_digest == manifests["linux/amd64"]
    assert arm.manifest_digest == manifests["linux/arm64"]
    assert [descriptor.tag for descriptor in store.tags()] == [reference]
    assert store.resolve(reference).digest == index
    assert store.resolve_platform(reference, "linux/amd64").digest == manifests["linux/amd64"]
    assert store.resolve_platform(reference, "linux/arm64").digest == manifests["linux/arm64"]
    with pytest.raises(errors.PlatformNotInStoreError, match="linux/arm/v7"):
        store.resolve_platform(reference, "linux/arm/v7")
    assert store.gc(grace_period_s=0).removed_blobs == []
    assert store.verify().ok


def test_pull_again_keeps_other_platforms(
    store: LayerStore, registry_repo: RegistryRepository, images: Path
) -> None:
    reference, index, manifests = push_b1(registry_repo, images)
    pull(store, reference, platform="linux/arm64")
    pull(store, reference, platform="linux/amd64")

    again = pull(store, reference, platform="linux/arm64")

    assert again.bytes_fetched == 0
    assert store.resolve(reference).digest == index
    assert store.resolve_platform(reference, "linux/amd64").digest == manifests["linux/amd64"]


def test_platform_names_ignore_case_and_kernel_spelling(
    store: LayerStore, registry_repo: RegistryRepository, images: Path
) -> None:
    reference, _, manifests = push_b1(registry_repo, images)

    arm = pull(store, reference, platform="Linux/AArch64")
    amd = pull(store, reference, platform="LINUX/x86_64")

    assert arm.manifest_digest == manifests["linux/arm64"]
    assert amd.manifest_digest == manifests["linux/amd64"]
    assert store.resolve_platform(reference, "linux/ARM64").digest == manifests["linux/arm64"]
    with pytest.raises(errors.PlatformNotInStoreError, match="linux/arm/v7"):
        store.resolve_platform(reference, "linux/arm/7")


def test_pull_by_platform_digest_tags_manifest(
    store: LayerStore, registry_repo: RegistryRepository, images: Path
) -> None:
    _, _, manifests = push_b1(registry_repo, images)
    digest = manifests["linux/arm64"]
    reference = f"{registry_repo.reference_prefix}@{digest}"

    report = pull(store, reference)

    assert report.index_digest is None
    assert report.manifest_digest == digest
    assert store.resolve(report.tag).digest == digest
    # An image manifest resolves to itself whatever platform is requested.
    assert store.resolve_platform(report.tag, "linux/amd64").digest == digest


def test_pull_by_index_digest_tags_index(
    store: LayerStore, registry_repo: RegistryRepository, images: Path
) -> None:
    _, index, manifests = push_b1(registry_repo, images)

    report = pull(store, f"{registry_repo.reference_prefix}@{index}", platform="linux/arm/v7")

    assert report.index_digest == index
    assert report.manifest_digest == manifests["linux/arm/v7"]
    assert store.resolve(report.tag).digest == index


def test_unpack_selects_platform_of_index_tag(
    store: LayerStore, registry_repo: RegistryRepository, images: Path, tmp_path: Path
) -> None:
    reference, _, manifests = push_b1(registry_repo, images)
    pull(store, reference, platform="linux/arm64")

    with pytest.raises(errors.PlatformNotInStoreError) as caught:
        store.unpack(reference, tmp_path / "host", platform="linux/arm/v6")
    assert caught.value.platform == "linux/arm/v6"
    assert "linux/arm/v6" in str(caught.value)
    assert not (tmp_path / "host" / "lowerdir").exists()

    report = store.unpack(reference, tmp_path / "arm64", platform="linux/arm64")
    assert report.manifest_digest == manifests["linux/arm64"]
    assert (tmp_path / "arm64" / "lowerdir").is_file()


def test_pull_and_unpack_tags_index(
    store: LayerStore, registry_repo: RegistryRepository, images: Path, tmp_path: Path
) -> None:
    reference, index, manifests = push_b1(registry_repo, images)
    pull(store, reference, platform="linux/amd64")

    async def run() -> tuple[PullReport, UnpackReport]:
        return await store.pull_and_unpack(reference, tmp_path / "arm", platform="linux/arm/v7")

    pulled, unpacked = asyncio.run(run())

    assert pulled.index_digest == index
    assert pulled.manifest_digest == manifests["linux/arm/v7"]
    assert unpacked.manifest_digest == manifests["linux/arm/v7"]
    assert (tmp_path / "arm" / "lowerdir").is_file()
    assert store.resolve(reference).digest == index
    assert store.resolve_platform(reference, "linux/amd64").digest == manifests["linux/amd64"]
    assert store.resolve_platform(reference, "linux/arm/v7").digest == manifests["linux/arm/v7"]


def test_cli_pull_json_and_unpack_platform(
    registry_repo: RegistryRepository, images: Path, tmp_path: Path
) -> None:
    reference, index, manifests = push_b1(registry_repo, images)
    store = str(tmp_path / "store")

    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "warmstart", *arguments, "--store", store],
            capture_output=True,
            text=True,
            timeout=60,
        )

    pulled = run("pull", reference, "--platform", "linux/arm64", "--json")
    assert pulled.returncode == 0, pulled.stderr
    report = json.loads(pulled.stdout)
    assert report["index_digest"] == index
    assert report["manifest_digest"] == manifests["linux/arm64"]
    assert report["tag"] == reference

    text = run("pull", reference, "--platform", "linux/arm/v7")
    assert text.returncode == 0, text.stderr
    assert f"{manifests['linux/arm/v7']} from index {index}" in text.stdout

    absent = run("unpack", reference, "--to", str(tmp_path / "v6"), "--platform", "linux/arm/v6")
    assert absent.returncode == 1
    assert "linux/arm/v6" in absent.stderr
    unpacked = run(
        "unpack", reference, "--to", str(tmp_path / "arm64"), "--platform", "linux/arm64", "--json"
    )
    assert unpacked.returncode == 0, unpacked.stderr
    assert json.loads(unpacked.stdout)["manifest_digest"] == manifests["linux/arm64"]
    invalid = run("unpack", reference, "--to", str(tmp_path / "x"), "--platform", "linux")
    assert invalid.returncode == 2
    assert "linux" in invalid.stderr


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.lists(st.sampled_from(B1_PLATFORMS), min_size=1, max_size=5))
def test_any_pull_order_tags_index_with_pulled_platforms(
    registry_repo: RegistryRepository, images: Path, order: list[str]
) -> None:
    # The push happens once per test; each example pulls into a store of its own.
    if not hasattr(registry_repo, "b1"):
        registry_repo.b1 = push_b1(registry_repo, images)  # type: ignore[attr-defined]
    reference, index, manifests = registry_repo.b1  # type: ignore[attr-defined]
    directory = Path(tempfile.mkdtemp(prefix="warmstart-index-pulls-"))
    try:
        store = LayerStore(directory / "store")
        for platform in order:
            report = pull(store, reference, platform=platform)
            assert report.index_digest == index
            assert report.manifest_digest == manifests[platform]

        assert [(tag.tag, tag.digest) for tag in store.tags()] == [(reference, index)]
        for platform in B1_PLATFORMS:
            if platform in order:
                assert store.resolve_platform(reference, platform).digest == manifests[platform]
            else:
                with pytest.raises(errors.PlatformNotInStoreError):
                    store.resolve_platform(reference, platform)
        assert store.gc(grace_period_s=0).removed_blobs == []
        assert store.verify().ok
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# Fake registry: the index shapes and faults a real registry does not produce.


def two_platform_index(
    registry: FakeRegistry, media_type: str | None = None, version: int = 1
) -> Content:
    """Serve ``app:v1``, an index of a linux/amd64 and a linux/arm64 image with one own layer
    each. With ``media_type`` the index is served as that type (a Docker manifest list).
    Another ``version`` gives other layers, so another index."""
    images = [
        (
            {"os": "linux", "architecture": architecture},
            build_image(
                [tar_layer({"platform.txt": f"{architecture} {version}\n".encode() * 50_000})],
                architecture=architecture,
                compress=False,
            ),
        )
        for architecture in ("amd64", "arm64")
    ]
    index = build_index(images)
    if media_type is None:
        return registry.add_content("app", "v1", index)
    for _, image in images:
        registry.add_content("app", None, image)
    value = json.loads(index.manifest)
    value["mediaType"] = media_type
    manifest = canonical_json(value)
    registry.add_manifest("app", manifest, media_type, "v1")
    return Content(media_type, manifest, children=[image for _, image in images])


def test_docker_manifest_list_is_tagged(store: LayerStore, fake_registry: FakeRegistry) -> None:
    index = two_platform_index(fake_registry, DOCKER_MANIFEST_LIST)
    reference = f"{fake_registry.host}/app:v1"

    pull(store, reference, platform="linux/arm64")
    pull(store, reference, platform="linux/amd64")

    assert store.resolve(reference).digest == index.digest
    assert store.resolve(reference).media_type == DOCKER_MANIFEST_LIST
    for child, platform in zip(index.children, ("linux/amd64", "linux/arm64"), strict=True):
        assert store.resolve_platform(reference, platform).digest == child.digest
    assert store.verify().ok


def test_failed_pull_keeps_index_tag(store: LayerStore, fake_registry: FakeRegistry) -> None:
    index = two_platform_index(fake_registry)
    amd, arm = index.children
    reference = f"{fake_registry.host}/app:v1"
    failing = fake_registry.add_fault(faults.ServiceUnavailable(amd.layers[0].digest, times=None))

    with pytest.raises(errors.RegistryError):
        pull(store, reference, platform="linux/amd64", max_attempts=1)
    assert failing.fired >= 1
    assert store.tags() == []

    fake_registry.clear_faults()
    pull(store, reference, platform="linux/amd64")
    failing = fake_registry.add_fault(faults.ServiceUnavailable(arm.layers[0].digest, times=None))
    with pytest.raises(errors.RegistryError):
        pull(store, reference, platform="linux/arm64", max_attempts=1)

    assert store.resolve(reference).digest == index.digest
    assert store.resolve_platform(reference, "linux/amd64").digest == amd.digest
    assert not store.has(arm.digest), "a manifest is committed only after its blobs"
    with pytest.raises(errors.PlatformNotInStoreError, match="linux/arm64"):
        store.resolve_platform(reference, "linux/arm64")
    assert store.verify().ok


def test_killed_pull_never_tags_incomplete_platform(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    index = two_platform_index(fake_registry)
    amd, arm = index.children
    reference = f"{fake_registry.host}/app:v1"
    pull(store, reference, platform="linux/amd64")
    layer = arm.layers[0].digest
    pause = fake_registry.add_fault(faults.Pause(layer, after_bytes=1000, timeout_s=20))
    script = (
        "import asyncio, sys\n"
        "from warmstart import LayerStore\n"
        "store = LayerStore(sys.argv[1])\n"
        "asyncio.run(store.pull(sys.argv[2], platform='linux/arm64', connections=1))\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(store.root), reference], cwd=REPOSITORY
    )
    try:
        deadline = time.monotonic() + 20
        assert pause.paused.wait(timeout=20), "the layer download never started"
        assert arm.config is not None
        while time.monotonic() < deadline and not store.has(arm.config.digest):
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait(timeout=30)
        pause.release.set()

    assert store.has(arm.config.digest)
    assert not store.has(layer)
    assert store.resolve(reference).digest == index.digest
    with pytest.raises(errors.PlatformNotInStoreError, match="linux/arm64"):
        store.resolve_platform(reference, "linux/arm64")
    # Had the manifest been committed before its layer, the store would still refuse the tag.
    store.put(arm.manifest)
    with pytest.raises(errors.MissingBlobError) as caught:
        store.tag("other", index.digest)
    assert caught.value.digest == layer
    assert "linux/arm64" in str(caught.value)
    assert not store.verify().ok, "verify reports the layer of the present arm64 manifest"

    fake_registry.clear_faults()
    pull(store, reference, platform="linux/arm64")
    assert store.resolve_platform(reference, "linux/arm64").digest == arm.digest
    assert store.resolve_platform(reference, "linux/amd64").digest == amd.digest
    assert store.verify().ok


def test_new_index_under_same_tag_moves_tag(store: LayerStore, fake_registry: FakeRegistry) -> None:
    first = two_platform_index(fake_registry)
    reference = f"{fake_registry.host}/app:v1"
    pull(store, reference, platform="linux/amd64")
    second = two_platform_index(fake_registry, version=2)

    report = pull(store, reference, platform="linux/arm64")

    assert report.index_digest == second.digest != first.digest
    assert store.resolve(reference).digest == second.digest
    with pytest.raises(errors.PlatformNotInStoreError, match="linux/amd64"):
        store.resolve_platform(reference, "linux/amd64")

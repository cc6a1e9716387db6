"""A tagged index with only some platforms in the store: the tag rule, gc, selection, verify."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import require_tool
from warmstart import LayerStore, errors

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ARCHITECTURES = ("amd64", "arm64", "ppc64le", "s390x")
# OCI names of the machine names Python reports, as the store names the host platform.
HOST_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class PlatformImage:
    """One platform of a multi-platform image, built in memory and put on demand."""

    architecture: str
    layer: bytes
    config: bytes
    manifest: bytes

    @classmethod
    def build(cls, architecture: str, seed: int) -> PlatformImage:
        layer = f"layer of {architecture} {seed}".encode()
        config = json.dumps(
            {
                "architecture": architecture,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha256(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        return cls(architecture, layer, config, manifest)

    @property
    def platform(self) -> str:
        return f"linux/{self.architecture}"

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def blobs(self) -> list[str]:
        return [self.digest, sha256(self.config), sha256(self.layer)]

    def put(self, store: LayerStore) -> None:
        for data in (self.layer, self.config, self.manifest):
            store.put(data)

    def entry(self) -> dict[str, object]:
        return {
            "mediaType": MANIFEST,
            "digest": self.digest,
            "size": len(self.manifest),
            "platform": {"os": "linux", "architecture": self.architecture},
        }


def put_index(store: LayerStore, platforms: list[PlatformImage]) -> str:
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [p.entry() for p in platforms]}
    return store.put(json.dumps(index).encode()).digest


def platforms(seed: int) -> list[PlatformImage]:
    return [PlatformImage.build(architecture, seed) for architecture in ARCHITECTURES]


def test_tag_index_with_one_platform_present(store: LayerStore) -> None:
    images = platforms(1)
    images[0].put(store)
    index = put_index(store, images)

    descriptor = store.tag("app:v1", index)

    assert descriptor.digest == index
    assert descriptor.media_type == INDEX
    assert store.resolve("app:v1").digest == index
    assert store.verify().ok


def test_tag_index_with_incomplete_platform_fails(store: LayerStore) -> None:
    images = platforms(2)
    images[0].put(store)
    arm = images[1]
    store.put(arm.manifest)
    store.put(arm.layer)
    index = put_index(store, images)

    with pytest.raises(errors.MissingBlobError) as caught:
        store.tag("app:v1", index)

    assert caught.value.digest == sha256(arm.config)
    assert arm.digest in caught.value.referenced_by
    assert "linux/arm64" in caught.value.referenced_by
    assert "app:v1" in str(caught.value)
    assert "pull the image again" in str(caught.value)
    assert store.tags() == []


def test_gc_keeps_present_platform_only(store: LayerStore) -> None:
    images = platforms(3)
    images[1].put(store)
    index = put_index(store, images)
    store.tag("app:v1", index)
    stray = store.put(b"referenced by nothing").digest

    report = store.gc(grace_period_s=0)

    assert [blob.digest for blob in report.removed_blobs] == [stray]
    assert store.has(index)
    for digest in images[1].blobs:
        assert store.has(digest), digest


def test_resolve_absent_platform_says_pull_it(store: LayerStore) -> None:
    images = platforms(4)
    images[0].put(store)
    store.tag("app:v1", put_index(store, images))

    with pytest.raises(errors.PlatformNotInStoreError) as caught:
        store.resolve_platform("app:v1", "linux/arm64")

    error = caught.value
    assert isinstance(error, LookupError)
    assert error.reference == "app:v1"
    assert error.platform == "linux/arm64"
    assert error.manifest == images[1].digest
    assert error.digest == images[1].digest
    assert "pull that platform" in str(error)
    assert store.resolve_platform("app:v1", "linux/amd64").digest == images[0].digest


def test_resolve_unlisted_platform_is_platform_not_found(store: LayerStore) -> None:
    store.tag("app:v1", put_index(store, platforms(5)[:2]))

    with pytest.raises(errors.PlatformNotFoundError, match=r"linux/amd64, linux/arm64"):
        store.resolve_platform("app:v1", "linux/riscv64")


def test_resolve_platform_rejects_invalid_platform(store: LayerStore) -> None:
    store.tag("app:v1", put_index(store, platforms(6)))

    with pytest.raises(errors.InvalidReferenceError, match="os/architecture"):
        store.resolve_platform("app:v1", "linux")


def test_resolve_half_a_platform_fails(store: LayerStore) -> None:
    images = platforms(7)
    images[0].put(store)
    store.tag("app:v1", put_index(store, images))
    store.delete(sha256(images[0].layer), force=True)

    with pytest.raises(errors.PlatformNotInStoreError) as caught:
        store.resolve_platform("app:v1", "linux/amd64")

    assert caught.value.digest == sha256(images[0].layer)
    assert caught.value.manifest == images[0].digest


def test_unpack_absent_host_platform_fails(store: LayerStore, tmp_path: Path) -> None:
    host = HOST_ARCHITECTURES.get(platform.machine(), platform.machine())
    images = [PlatformImage.build("s390x", 8), PlatformImage.build(host, 8)]
    images[0].put(store)
    store.tag("app:v1", put_index(store, images))
    target = tmp_path / "rootfs"

    with pytest.raises(errors.PlatformNotInStoreError, match=f"linux/{host}"):
        store.unpack("app:v1", target)

    assert not target.exists()


def test_export_keeps_partial_index(store: LayerStore, tmp_path: Path) -> None:
    images = platforms(9)
    images[2].put(store)
    index = put_index(store, images)
    store.tag("app:v1", index)

    store.export_layout(tmp_path / "layout")
    copy = LayerStore(tmp_path / "copy")
    copy.import_layout(tmp_path / "layout")

    assert copy.resolve("app:v1").digest == index
    assert copy.resolve_platform("app:v1", images[2].platform).digest == images[2].digest
    assert not copy.has(images[0].digest)
    assert copy.verify().ok


def test_real_index_keeps_one_platform(store: LayerStore, images: Path) -> None:
    # Tag v1 of the regclient layout is an index of linux/amd64, linux/arm64 and two
    # attestation manifests.
    store.import_layout(images / "regclient-testrepo" / "testrepo", tags=["v1"])
    index = store.resolve("v1").digest
    amd64 = store.resolve_platform("v1", "linux/amd64").digest
    arm64 = store.resolve_platform("v1", "linux/arm64").digest
    arm64_manifest = json.loads(store.read(arm64))
    arm64_only = {arm64_manifest["config"]["digest"]} | {
        layer["digest"] for layer in arm64_manifest["layers"]
    }
    amd64_manifest = json.loads(store.read(amd64))
    arm64_only -= {amd64_manifest["config"]["digest"]}
    arm64_only -= {layer["digest"] for layer in amd64_manifest["layers"]}
    store.untag("v1")
    store.delete(arm64)

    store.tag("v1", index)
    removed = {blob.digest for blob in store.gc(grace_period_s=0).removed_blobs}

    assert arm64_only <= removed
    assert store.resolve_platform("v1", "linux/amd64").digest == amd64
    with pytest.raises(errors.PlatformNotInStoreError):
        store.resolve_platform("v1", "linux/arm64")
    assert store.verify().ok


def test_skopeo_copies_present_platform_of_export(store: LayerStore, tmp_path: Path) -> None:
    program = require_tool("skopeo")
    images = [PlatformImage.build("amd64", 10), PlatformImage.build("arm64", 10)]
    images[0].put(store)
    store.tag("v1", put_index(store, images))
    store.export_layout(tmp_path / "layout")

    def copy(*arguments: str) -> subprocess.CompletedProcess[str]:
        command = [program, "--insecure-policy", *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    one_platform = copy(
        "--override-os",
        "linux",
        "--override-arch",
        "amd64",
        "copy",
        f"oci:{tmp_path / 'layout'}:v1",
        f"oci:{tmp_path / 'one'}:v1",
    )
    all_platforms = copy(
        "copy", "--all", f"oci:{tmp_path / 'layout'}:v1", f"oci:{tmp_path / 'all'}:v1"
    )

    assert one_platform.returncode == 0, one_platform.stderr
    # skopeo compresses the plain tar layer on the way, so only the config keeps its digest.
    assert LayerStore(tmp_path / "one").has(sha256(images[0].config))
    assert all_platforms.returncode != 0
    assert images[1].digest.removeprefix("sha256:") in all_platforms.stderr


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    present=st.sets(st.sampled_from(ARCHITECTURES)),
    seed=st.integers(0, 1000),
    strays=st.lists(st.binary(min_size=1, max_size=64), max_size=3),
)
def test_gc_and_resolve_hold_for_any_present_platforms(
    present: set[str], seed: int, strays: list[bytes]
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="warmstart-partial-index-"))
    try:
        store = LayerStore(directory / "store")
        images = platforms(seed)
        for image in images:
            if image.architecture in present:
                image.put(store)
        index = put_index(store, images)
        store.tag("app:v1", index)
        needed = {index} | {d for i in images if i.architecture in present for d in i.blobs}
        stray_digests = {store.put(data).digest for data in strays} - needed

        removed = {blob.digest for blob in store.gc(grace_period_s=0).removed_blobs}

        assert removed == stray_digests
        for digest in needed:
            assert store.has(digest), digest
        for image in images:
            if image.architecture in present:
                assert store.resolve_platform("app:v1", image.platform).digest == image.digest
            else:
                with pytest.raises(errors.PlatformNotInStoreError):
                    store.resolve_platform("app:v1", image.platform)
        assert store.verify().ok
    finally:
        shutil.rmtree(directory, ignore_errors=True)

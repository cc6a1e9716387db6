"""Import and export of real OCI layouts and `docker save` archives, read back by skopeo."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import require_tool
from warmstart import LayerStore, errors


def layout_tags(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    return [
        entry["annotations"]["org.opencontainers.image.ref.name"]
        for entry in index["manifests"] or []
        if "org.opencontainers.image.ref.name" in entry.get("annotations", {})
    ]


def test_import_regclient_layout_copies_every_blob(store: LayerStore, images: Path) -> None:
    source = images / "regclient-testrepo" / "testrepo"
    report = store.import_layout(source)
    source_blobs = sorted(p.name for p in (source / "blobs" / "sha256").iterdir())
    assert sorted(b.digest.removeprefix("sha256:") for b in store.list()) == source_blobs
    assert report.blobs_added == len(source_blobs)
    assert sorted(d.tag for d in store.tags() if d.tag) == sorted(layout_tags(source))
    for blob in store.list():
        data = store.read(blob.digest)
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest
    assert store.verify().ok


def test_import_again_adds_nothing(store: LayerStore, images: Path) -> None:
    source = images / "regclient-testrepo" / "testrepo"
    store.import_layout(source)
    again = store.import_layout(source)
    assert again.blobs_added == 0
    assert again.blobs_present > 0


def test_import_selected_tags_shares_base_layers(store: LayerStore, images: Path) -> None:
    source = images / "regclient-testrepo" / "testrepo"
    first = store.import_layout(source, tags=["v1"])
    second = store.import_layout(source, tags=["v2"])
    assert [d.tag for d in store.tags()] == ["v1", "v2"]
    assert first.blobs_added > 0
    assert second.blobs_present > 0, "v1 and v2 share base layers, so v2 reuses some"


def test_import_unknown_tag_fails(store: LayerStore, images: Path) -> None:
    with pytest.raises(errors.TagNotFoundError, match="no-such-tag"):
        store.import_layout(images / "regclient-testrepo" / "testrepo", tags=["no-such-tag"])


def test_import_layout_with_nested_index(store: LayerStore, images: Path) -> None:
    store.import_layout(images / "ggcr-testdata" / "test_index")
    assert sorted(d.tag or "" for d in store.tags()) == ["1", "2", "3", "4"]
    assert store.verify().ok


def test_import_layout_missing_blob_names_it(store: LayerStore, images: Path) -> None:
    source = images / "ggcr-testdata" / "test_gc_image_unknown_mediatype"
    with pytest.raises(errors.MissingBlobError) as caught:
        store.import_layout(source)
    assert caught.value.digest in str(caught.value)
    assert str(source) in str(caught.value)
    assert store.tags() == []


def test_import_docker_25_archive(store: LayerStore, images: Path) -> None:
    report = store.import_archive(images / "ggcr-testdata" / "hello-world-v25.tar", tag="hello")
    assert [image.tag for image in report.images] == ["hello"]
    manifest = json.loads(store.read(store.resolve("hello").digest))
    layer = manifest["layers"][0]
    assert layer["digest"] == (
        "sha256:12660636fe55438cc3ae7424da7ac56e845cdb52493ff9cf949c47a7f57f8b43"
    )
    assert layer["size"] == 10752
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert store.verify().ok


def test_import_archive_with_foreign_layer(store: LayerStore, images: Path) -> None:
    store.import_archive(images / "ggcr-testdata" / "foreign.tar")
    manifest = json.loads(store.read(store.resolve("gcr.io/foo/bar:latest").digest))
    foreign = manifest["layers"][1]
    assert foreign["mediaType"] == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    assert foreign["urls"] == ["example.com"]
    assert store.has(foreign["digest"])
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert store.verify().ok


def test_import_archive_missing_foreign_layer_fails_cleanly(
    store: LayerStore, images: Path
) -> None:
    with pytest.raises(errors.ForeignLayerError) as caught:
        store.import_archive(images / "ggcr-testdata" / "sparse_foreign.tar")
    assert "example.com" in str(caught.value)
    assert caught.value.digest.startswith("sha256:015b6ec6")
    assert isinstance(caught.value, errors.MissingBlobError)
    assert store.list() == [], "a failed import writes nothing"
    assert store.tags() == []


def test_import_archive_tag_needs_single_image(store: LayerStore, tmp_path: Path) -> None:
    archive = tmp_path / "two.tar"
    manifest = json.dumps([{"Config": "a.json", "RepoTags": [], "Layers": []}] * 2).encode()
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    with pytest.raises(errors.InvalidLayoutError, match="holds 2 images"):
        store.import_archive(archive, tag="one")


def test_export_round_trips_through_skopeo(store: LayerStore, images: Path, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    store.import_layout(images / "regclient-testrepo" / "testrepo")
    store.import_archive(images / "ggcr-testdata" / "hello-world-v25.tar", tag="hello")
    exported = tmp_path / "exported"
    report = store.export_layout(exported, tags=["v1", "hello"])
    assert sorted(layout_tags(exported)) == ["hello", "v1"]
    assert report.blobs_added > 0
    assert not (exported / "ingest").exists()

    for root, tag in [(store.root, "v1"), (store.root, "hello"), (exported, "v1")]:
        inspect = subprocess.run(
            [skopeo, "inspect", f"oci:{root}:{tag}"], capture_output=True, text=True, check=True
        )
        assert json.loads(inspect.stdout)["Os"] == "linux"


@pytest.mark.parametrize("tag", ["a-docker-oci", "hello", "v3"])
def test_skopeo_copies_from_store_byte_identical(
    store: LayerStore, images: Path, tmp_path: Path, tag: str
) -> None:
    skopeo = require_tool("skopeo")
    store.import_layout(images / "regclient-testrepo" / "testrepo")
    store.import_archive(images / "ggcr-testdata" / "hello-world-v25.tar", tag="hello")
    target = tmp_path / "copy"
    subprocess.run(
        [
            skopeo,
            "copy",
            "--override-os",
            "linux",
            "--override-arch",
            "amd64",
            f"oci:{store.root}:{tag}",
            f"dir:{target}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    copied = [p for p in target.iterdir() if len(p.name) == 64]
    assert copied, "skopeo copied no blobs"
    for path in copied:
        assert path.read_bytes() == store.read("sha256:" + path.name)

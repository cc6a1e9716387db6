"""Unpack through the Python API: real fixtures, layouts, whiteouts and the error classes."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tests.unpack.layers import (
    GZIP,
    TAR,
    Member,
    Model,
    leave_interrupted_run,
    put_image,
    scan,
    tar_bytes,
    target_state,
)
from warmstart import LayerStore, errors


def layer_tars(store: LayerStore, tag: str) -> list[bytes]:
    """The uncompressed layers of a stored image, bottom first (host platform of an index)."""
    manifest = json.loads(store.read(store.resolve(tag).digest))
    if "manifests" in manifest:
        entry = next(m for m in manifest["manifests"] if m["platform"]["architecture"] == "amd64")
        manifest = json.loads(store.read(entry["digest"]))
    tars = []
    for layer in manifest["layers"]:
        with store.open(layer["digest"]) as blob, tarfile.open(fileobj=blob) as archive:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as copy:
                for member in archive.getmembers():
                    copy.addfile(member, archive.extractfile(member) if member.isfile() else None)
            tars.append(buffer.getvalue())
    return tars


def test_fixture_image_flatten_matches_model(
    store: LayerStore, images: Path, tmp_path: Path
) -> None:
    store.import_layout(images / "regclient-testrepo" / "testrepo", tags=["v3"])
    report = store.unpack("v3", tmp_path / "out", flatten=True)
    model = Model()
    for layer in layer_tars(store, "v3"):
        model.apply(layer)
    assert report.layout == "flatten"
    assert report.result == (tmp_path / "out" / "rootfs").resolve()
    assert len(report.layers) >= 1
    assert scan(report.result) == model.entries


def test_fixture_docker_archive_overlay(store: LayerStore, images: Path, tmp_path: Path) -> None:
    imported = store.import_archive(images / "ggcr-testdata" / "hello-world-v25.tar")
    report = store.unpack(imported.images[0].digest, tmp_path / "out")
    lowerdir = (tmp_path / "out" / "lowerdir").read_text().strip().split(":")
    assert report.layout == "overlay"
    assert [Path(p).name for p in reversed(lowerdir)] == [
        layer.diff_id.removeprefix("sha256:") for layer in report.layers
    ]
    assert (Path(lowerdir[-1]) / "hello").is_file()


def test_overlay_twice_reuses_every_layer(store: LayerStore, tmp_path: Path) -> None:
    put_image(store, "img", [tar_bytes([Member("f", data=b"x")]), tar_bytes([Member("g")])])
    first = store.unpack("img", tmp_path / "out")
    second = store.unpack("img", tmp_path / "out")
    assert [layer.reused for layer in first.layers] == [False, False]
    assert [layer.reused for layer in second.layers] == [True, True]
    assert first.layers[0].entries == 1


def test_overlay_layer_listed_twice(store: LayerStore, tmp_path: Path) -> None:
    files = [Member(f"d/f{i}", data=os.urandom(4096)) for i in range(2000)]
    repeated = tar_bytes([Member("d", tarfile.DIRTYPE, mode=0o755), *files])
    other = tar_bytes([Member("g", data=b"x")])
    put_image(store, "img", [repeated, other, repeated])
    report = store.unpack("img", tmp_path / "out")
    assert [layer.reused for layer in report.layers] == [False, False, True]
    assert report.layers[0].entries == 2001
    lowerdir = (tmp_path / "out" / "lowerdir").read_text().strip().split(":")
    assert lowerdir[0] == lowerdir[2]
    model = Model()
    model.apply(repeated)
    assert scan(Path(lowerdir[0])) == model.entries


def test_whiteouts_flatten_and_overlay(store: LayerStore, tmp_path: Path) -> None:
    lower = tar_bytes(
        [
            Member("a", tarfile.DIRTYPE, mode=0o755),
            Member("a/gone", data=b"lower"),
            Member("a/kept", data=b"lower"),
            Member("o", tarfile.DIRTYPE, mode=0o755),
            Member("o/hidden", data=b"lower"),
        ]
    )
    upper = tar_bytes(
        [
            Member("a/.wh.gone"),
            Member("o/.wh..wh..opq"),
            Member("o/new", data=b"upper"),
        ]
    )
    put_image(store, "img", [lower, upper], media_type=TAR)
    flat = store.unpack("img", tmp_path / "flat", flatten=True).result
    assert sorted(scan(flat)) == ["a", "a/kept", "o", "o/new"]
    store.unpack("img", tmp_path / "layers")
    top = Path((tmp_path / "layers" / "lowerdir").read_text().split(":")[0])
    whiteout = (top / "a" / "gone").lstat()
    assert stat.S_ISCHR(whiteout.st_mode)
    assert whiteout.st_rdev == 0
    assert os.getxattr(top / "o", "trusted.overlay.opaque") == b"y"


HOSTILE = [
    pytest.param([Member("/etc/evil")], "/etc/evil", "absolute", id="absolute-path"),
    pytest.param([Member("a/../../evil")], "a/../../evil", "`..`", id="parent-component"),
    pytest.param(
        [Member("up", tarfile.SYMTYPE, link="../../.."), Member("up/evil", data=b"x")],
        "up",
        "outside the root",
        id="escaping-symlink-then-write",
    ),
    pytest.param(
        [Member("link", tarfile.LNKTYPE, link="../../etc/passwd")],
        "link",
        "`..`",
        id="hardlink-parent",
    ),
    pytest.param(
        [Member("link", tarfile.LNKTYPE, link="/etc/passwd")],
        "link",
        "absolute",
        id="hardlink-absolute",
    ),
]


@pytest.mark.parametrize("flatten", [True, False], ids=["flatten", "overlay"])
@pytest.mark.parametrize(("members", "entry", "reason"), HOSTILE)
def test_hostile_entry_rejected(
    store: LayerStore,
    tmp_path: Path,
    members: list[Member],
    entry: str,
    reason: str,
    flatten: bool,
) -> None:
    put_image(store, "img", [tar_bytes(members)])
    with pytest.raises(errors.UnsafeEntryError) as caught:
        store.unpack("img", tmp_path / "out", flatten=flatten)
    assert caught.value.entry == entry
    assert reason in caught.value.reason
    assert isinstance(caught.value, ValueError)
    assert not (tmp_path / "out" / "rootfs").exists()
    assert not (tmp_path / "out" / "lowerdir").exists()
    assert not (tmp_path / "evil").exists()


def test_diff_id_mismatch_error_class(store: LayerStore, tmp_path: Path) -> None:
    layer = tar_bytes([Member("f", data=b"x")])
    digest = put_image(store, "img", [layer])
    manifest = json.loads(store.read(digest))
    config = json.loads(store.read(manifest["config"]["digest"]))
    config["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    config_info = store.put(json.dumps(config).encode())
    manifest["config"].update(digest=config_info.digest, size=config_info.size)
    store.tag("wrong", store.put(json.dumps(manifest).encode()).digest)
    with pytest.raises(errors.DiffIdMismatchError) as caught:
        store.unpack("wrong", tmp_path / "out")
    assert caught.value.expected == "sha256:" + "0" * 64
    assert caught.value.layer == manifest["layers"][0]["digest"]


def test_missing_tag_and_busy_target(store: LayerStore, tmp_path: Path) -> None:
    with pytest.raises(errors.TagNotFoundError):
        store.unpack("nope", tmp_path / "out")
    target = tmp_path / "busy"
    target.mkdir()
    (target / "mine.txt").write_text("not warmstart's")
    put_image(store, "img", [tar_bytes([Member("f")])])
    with pytest.raises(errors.UnpackTargetError, match=r"mine\.txt") as caught:
        store.unpack("img", target)
    assert isinstance(caught.value, FileExistsError)


@pytest.mark.parametrize("flatten", [False, True], ids=["overlay", "flatten"])
def test_rejected_target_keeps_other_image(
    store: LayerStore, tmp_path: Path, flatten: bool
) -> None:
    put_image(store, "one", [tar_bytes([Member("one", data=b"1")])])
    put_image(store, "two", [tar_bytes([Member("two", data=b"2")])])
    target = tmp_path / "out"
    store.unpack("one", target, flatten=flatten)
    leave_interrupted_run(target)
    before = target_state(target)

    with pytest.raises(errors.UnpackTargetError, match="holds image"):
        store.unpack("two", target, flatten=flatten)

    assert target_state(target) == before


def test_compression_mismatch_is_invalid_layer(store: LayerStore, tmp_path: Path) -> None:
    layer = tar_bytes([Member("f", data=b"x")])
    digest = put_image(store, "img", [layer], media_type=TAR)
    manifest = json.loads(store.read(digest))
    manifest["layers"][0]["mediaType"] = GZIP
    store.tag("lying", store.put(json.dumps(manifest).encode()).digest)
    with pytest.raises(errors.InvalidLayerError, match="an uncompressed tar"):
        store.unpack("lying", tmp_path / "out")


def test_unpack_releases_the_gil(store: LayerStore, tmp_path: Path) -> None:
    files = [Member(f"d{i}/f{j}", data=os.urandom(2048)) for i in range(20) for j in range(150)]
    put_image(store, "img", [tar_bytes(files)])
    spans: list[tuple[float, float]] = []

    def run(name: str) -> None:
        started = time.monotonic()
        store.unpack("img", tmp_path / name, flatten=True)
        spans.append((started, time.monotonic()))

    threads = [threading.Thread(target=run, args=(f"out{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (_, first_end), (second_start, _) = sorted(spans)
    assert second_start < first_end, "the second unpack waited for the first"

"""Races and hostile inputs that once broke the store, each checked against the fixed behaviour."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from warmstart import LayerStore, errors

CONTEXT = multiprocessing.get_context("spawn")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def churn_same_digest(root: str, data: bytes, deleter: bool, seconds: float) -> list[str]:
    """Put one blob in a loop (and delete it, when `deleter`); return every wrong read."""
    store = LayerStore(root)
    digest = sha256(data)
    wrong = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        store.put(data, digest=digest, size=len(data))
        try:
            read = store.read(digest)
        except errors.BlobNotFoundError:
            continue  # deleted by the other process: fine
        if read != data:
            wrong.append(f"read {len(read)} bytes")
        if deleter:
            store.delete(digest, force=True)
    return wrong


def test_put_racing_delete_never_exposes_wrong_blob(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    LayerStore(root)
    data = os.urandom(4 << 20)
    with CONTEXT.Pool(3) as pool:
        results = pool.starmap(
            churn_same_digest,
            [(root, data, True, 3.0), (root, data, False, 3.0), (root, data, False, 3.0)],
        )
    assert [wrong for wrong in results if wrong] == []
    report = LayerStore(root).verify()
    assert report.ok, report.problems


def tag_many(root: str, prefix: str, count: int) -> None:
    store = LayerStore(root)
    manifest = store.resolve("base").digest
    for index in range(count):
        store.tag(f"{prefix}-{index}", manifest)


def test_concurrent_tags_survive_aggressive_gc(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    store = LayerStore(root)
    config = store.put(b"{}").digest
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": 2,
            },
            "layers": [],
        }
    ).encode()
    store.tag("base", store.put(manifest).digest)
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            store.gc(grace_period_s=0, ingest_max_age_s=0)

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        with CONTEXT.Pool(3) as pool:
            pool.starmap(tag_many, [(root, f"p{i}", 60) for i in range(3)])
    finally:
        stop.set()
        collector.join(timeout=60)
    assert len(store.tags()) == 1 + 3 * 60


def test_put_of_present_blob_protects_it_from_gc(store: LayerStore) -> None:
    layer = store.put(b"shared layer bytes").digest
    path = store.path(layer)
    old = time.time() - 7200
    os.utime(path, (old, old))
    store.put(b"shared layer bytes", digest=layer)  # a pull finds it present
    assert store.gc().removed_blobs == []
    assert store.has(layer)


def test_tag_refuses_incomplete_image(store: LayerStore) -> None:
    layer = sha256(b"never stored")
    config = store.put(b"{}").digest
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": 2,
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 12}
            ],
        }
    ).encode()
    digest = store.put(manifest).digest
    with pytest.raises(errors.MissingBlobError) as caught:
        store.tag("incomplete", digest)
    assert caught.value.digest == layer
    assert store.tags() == []


def test_tag_refuses_blob_that_is_not_a_manifest(store: LayerStore) -> None:
    with pytest.raises(errors.InvalidLayoutError, match="not a manifest or index"):
        store.tag("x", store.put(b"plain bytes").digest)


def test_symlink_planted_in_ingest_is_not_followed(store: LayerStore, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"user data")
    data = b"blob content"
    partial = store.root / "ingest" / f"sha256-{sha256(data)[7:]}.data"
    partial.symlink_to(victim)
    info = store.put(data, digest=sha256(data))
    assert victim.read_bytes() == b"user data"
    blob = store.path(info.digest)
    assert blob.is_file()
    assert not blob.is_symlink()
    assert blob.read_bytes() == data


def test_verify_reports_symlinks_and_directories_in_blobs(
    store: LayerStore, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x")
    (store.root / "blobs" / "sha256" / ("a" * 64)).symlink_to(target)
    (store.root / "blobs" / "sha256" / "subdir").mkdir()
    kinds = sorted(problem.kind for problem in store.verify().problems)
    assert kinds == ["invalid_name", "invalid_name"]
    assert store.list() == []


def test_read_only_partial_is_replaced(store: LayerStore) -> None:
    data = b"layer " * 1000
    partial = store.root / "ingest" / f"sha256-{sha256(data)[7:]}.data"
    partial.write_bytes(data[:100])
    partial.chmod(0o444)
    assert store.put(data, digest=sha256(data)).created
    assert store.read(sha256(data)) == data


def test_put_stream_rejects_none_from_read(store: LayerStore) -> None:
    class NonBlocking(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes | None:  # type: ignore[override]
            return None

    with pytest.raises(TypeError, match="non-blocking"):
        store.put_stream(NonBlocking())
    assert store.list() == []


def open_store(root: str) -> str:
    return str(LayerStore(root).root)


def test_many_processes_create_one_store(tmp_path: Path) -> None:
    root = str(tmp_path / "fresh")
    with CONTEXT.Pool(2) as pool:
        roots = pool.map(open_store, [root] * 16)
    assert set(roots) == {root}
    threads = [threading.Thread(target=LayerStore, args=(tmp_path / "threads",)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (tmp_path / "threads" / "oci-layout").is_file()
    assert json.loads((tmp_path / "threads" / "index.json").read_text())["manifests"] == []


def test_verify_reports_corrupt_manifest_instead_of_failing(store: LayerStore) -> None:
    config = store.put(b"{}").digest
    manifest = json.dumps(
        {"schemaVersion": 2, "config": {"digest": config, "size": 2}, "layers": []}
    ).encode()
    digest = store.put(manifest).digest
    store.tag("app", digest)
    path = store.path(digest)
    path.chmod(0o644)
    path.write_bytes(manifest.replace(config[-4:].encode(), b"XXXX"))  # still JSON, bad digest
    report = store.verify(quarantine=True)
    assert [(p.kind, p.digest) for p in report.problems][:1] == [("digest_mismatch", digest)]
    assert not path.exists()


def test_ingest_does_not_accumulate_files(store: LayerStore) -> None:
    for index in range(20):
        data = f"blob {index}".encode()
        store.put(data, digest=sha256(data))
        with pytest.raises(errors.DigestMismatchError):
            store.put(b"wrong", digest=sha256(data + b"!"))
    leftovers = sorted(p.name for p in (store.root / "ingest").iterdir())
    assert leftovers == []


def write_archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def legacy_archive(
    tmp_path: Path, layer: bytes, extra: list[tuple[tarfile.TarInfo, bytes | None]]
) -> Path:
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer), sha256(layer)]},
        }
    ).encode()
    manifest = json.dumps(
        [
            {
                "Config": "config.json",
                "RepoTags": ["app:1"],
                "Layers": ["aaa/layer.tar", "ccc/layer.tar"],
            }
        ]
    ).encode()
    link = tarfile.TarInfo("ccc/layer.tar")
    link.type = tarfile.SYMTYPE
    link.linkname = "../aaa/layer.tar"
    members = [
        *extra,
        file_member("aaa/layer.tar", layer),
        (link, None),
        file_member("config.json", config),
        file_member("manifest.json", manifest),
    ]
    path = tmp_path / "legacy.tar"
    write_archive(path, members)
    return path


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            archive.addfile(file_member(name, data)[0], io.BytesIO(data))
    return buffer.getvalue()


def test_archive_follows_layer_symlinks_and_takes_last_entry(
    store: LayerStore, tmp_path: Path
) -> None:
    layer = tar_bytes({"hello.txt": b"hello"})
    decoy_link = tarfile.TarInfo("aaa/layer.tar")
    decoy_link.type = tarfile.SYMTYPE
    decoy_link.linkname = "/dev/null"
    path = legacy_archive(
        tmp_path, layer, [(decoy_link, None), file_member("aaa/layer.tar", b"decoy")]
    )
    store.import_archive(path)
    manifest = json.loads(store.read(store.resolve("app:1").digest))
    assert [entry["digest"] for entry in manifest["layers"]] == [sha256(layer), sha256(layer)]


def test_archive_layer_must_match_diff_id(store: LayerStore, tmp_path: Path) -> None:
    layer = tar_bytes({"hello.txt": b"hello"})
    path = legacy_archive(tmp_path, layer, [])
    with tarfile.open(path) as archive:
        members = [(m, archive.extractfile(m).read() if m.isfile() else None) for m in archive]  # type: ignore[union-attr]
    swapped = [
        file_member("aaa/layer.tar", tar_bytes({"other.txt": b"other"}))
        if m.name == "aaa/layer.tar"
        else (m, d)
        for m, d in members
    ]
    write_archive(path, swapped)
    with pytest.raises(errors.InvalidLayoutError, match="diff_id"):
        store.import_archive(path)
    assert store.tags() == []


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        pytest.param(["--grace-period", "-1"], "finite number >= 0", id="negative"),
        pytest.param(["--ingest-max-age", "inf"], "finite number >= 0", id="infinite"),
        pytest.param(["--grace-period", "soon"], "invalid number", id="not-a-number"),
    ],
)
def test_cli_gc_rejects_bad_durations(tmp_path: Path, arguments: list[str], fragment: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "warmstart", "store", "gc", "--store", str(tmp_path), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_io_error_message_is_one_clean_line(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with pytest.raises(errors.StoreIOError) as caught:
        LayerStore(not_a_directory)
    message = str(caught.value)
    assert message.startswith(f"create directory {not_a_directory} failed: File exists")
    assert "os error" not in message
    assert "PosixPath" not in message
    assert caught.value.errno == 17


def test_archive_errors_do_not_quote_file_content(store: LayerStore, tmp_path: Path) -> None:
    secret = tmp_path / "notes.txt"
    secret.write_text("password=hunter2\n" * 100)
    with pytest.raises(errors.InvalidLayoutError) as caught:
        store.import_archive(secret)
    assert "hunter2" not in str(caught.value)
    assert "not a readable tar archive" in str(caught.value)


@pytest.mark.parametrize("value", [-1, -(2**40)])
def test_negative_offsets_and_sizes_are_value_errors(store: LayerStore, value: int) -> None:
    digest = store.put(b"0123456789").digest
    with pytest.raises(ValueError, match="offset must be at least 0"):
        store.read(digest, value)
    with pytest.raises(ValueError, match="length must be at least 0"):
        store.read(digest, 0, value)
    with pytest.raises(ValueError, match="size must be at least 0"):
        store.put(b"x", size=value)

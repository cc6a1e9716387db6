"""The Python binding of the layer store: operations, errors and result types."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from warmstart import LayerStore, errors


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_and_read_round_trip(store: LayerStore) -> None:
    data = os.urandom(100_000)
    info = store.put(data)
    assert info.digest == sha256(data)
    assert info.size == len(data)
    assert info.created
    assert store.read(info.digest) == data
    assert store.read(info.digest, 10, 5) == data[10:15]
    assert store.read(info.digest, 99_990) == data[99_990:]


def test_put_same_content_twice_reuses_blob(store: LayerStore) -> None:
    first = store.put(b"layer", digest=sha256(b"layer"), size=5)
    second = store.put(b"layer", digest=sha256(b"layer"), size=5)
    assert first.created
    assert not second.created
    assert first.digest == second.digest


def test_put_file_and_open(store: LayerStore, tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(3 << 20))
    info = store.put_file(source)
    with store.open(info.digest) as blob:
        assert blob.read() == source.read_bytes()
    assert store.path(info.digest).is_file()


def test_put_stream_from_file_object_and_iterable(store: LayerStore) -> None:
    data = os.urandom(5 << 20)
    from_file = store.put_stream(io.BytesIO(data), digest=sha256(data), size=len(data))
    assert from_file.digest == sha256(data)
    chunks = [data[i : i + 333_333] for i in range(0, len(data), 333_333)]
    store.delete(from_file.digest)
    from_iterable = store.put_stream(iter(chunks))
    assert from_iterable.digest == sha256(data)
    assert store.read(from_iterable.digest) == data


def test_put_stream_reraises_reader_exception(store: LayerStore) -> None:
    def failing_chunks():  # type: ignore[no-untyped-def]
        yield b"first chunk"
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        store.put_stream(failing_chunks())
    assert store.list() == []


def test_put_stream_rejects_non_bytes(store: LayerStore) -> None:
    with pytest.raises(TypeError, match="bytes"):
        store.put_stream(iter(["text"]))
    with pytest.raises(TypeError, match="file object or an iterable"):
        store.put_stream(42)  # type: ignore[arg-type]


def test_wrong_digest_raises_and_stores_nothing(store: LayerStore) -> None:
    claimed = sha256(b"other")
    with pytest.raises(errors.DigestMismatchError) as caught:
        store.put(b"payload", digest=claimed)
    assert isinstance(caught.value, ValueError)
    assert caught.value.expected == claimed
    assert caught.value.actual == sha256(b"payload")
    assert caught.value.bytes_read == 7
    assert claimed in str(caught.value)
    assert store.list() == []


def test_wrong_size_raises_and_stores_nothing(store: LayerStore) -> None:
    with pytest.raises(errors.SizeMismatchError) as caught:
        store.put(b"payload", digest=sha256(b"payload"), size=8)
    assert caught.value.expected == 8
    assert caught.value.actual == 7
    assert store.list() == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("", "expected <algorithm>:<hex>", id="empty"),
        pytest.param("sha256", "expected <algorithm>:<hex>", id="no-separator"),
        pytest.param("md5:" + "0" * 32, "unsupported algorithm", id="md5"),
        pytest.param("sha256:" + "0" * 63, "exactly 64", id="short"),
        pytest.param("sha256:" + "A" * 64, "lower-case", id="upper-case"),
        pytest.param("sha512:" + "0" * 64, "exactly 128", id="sha512-short"),
        pytest.param("sha256:../" + "0" * 61, "lower-case", id="path-traversal"),
    ],
)
def test_invalid_digest_is_rejected_with_value(store: LayerStore, text: str, fragment: str) -> None:
    with pytest.raises(errors.InvalidDigestError) as caught:
        store.has(text)
    assert fragment in str(caught.value)
    assert repr(text).replace("'", '"') in str(caught.value)
    assert caught.value.value == text


def test_sha512_digests_are_supported(store: LayerStore) -> None:
    data = b"model weights"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    info = store.put(data, digest=digest)
    assert info.digest == digest
    assert store.has(digest)
    assert store.path(digest).parent.name == "sha512"


def test_missing_blob_raises_not_found(store: LayerStore) -> None:
    digest = sha256(b"absent")
    assert not store.has(digest)
    for call in (store.stat, store.read, store.path, store.open):
        with pytest.raises(errors.BlobNotFoundError) as caught:
            call(digest)
        assert isinstance(caught.value, LookupError)
        assert caught.value.digest == digest


def test_read_past_end_raises(store: LayerStore) -> None:
    info = store.put(b"0123456789")
    with pytest.raises(errors.InvalidRangeError, match="outside blob"):
        store.read(info.digest, 5, 6)


def test_committed_blobs_are_read_only(store: LayerStore) -> None:
    info = store.put(b"immutable")
    mode = Path(store.path(info.digest)).stat().st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def test_list_stat_and_delete(store: LayerStore) -> None:
    digests = sorted(store.put(bytes([i]) * (i + 1)).digest for i in range(5))
    assert [blob.digest for blob in store.list()] == digests
    assert store.stat(digests[0]).size in range(1, 6)
    assert store.delete(digests[0])
    assert not store.delete(digests[0])
    assert len(store.list()) == 4


def put_image(store: LayerStore, layer: bytes) -> tuple[str, str, str]:
    layer_digest = store.put(layer).digest
    config = b'{"architecture":"amd64","os":"linux"}'
    config_digest = store.put(config).digest
    manifest = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        f'"config":{{"mediaType":"application/vnd.oci.image.config.v1+json",'
        f'"digest":"{config_digest}","size":{len(config)}}},'
        f'"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar",'
        f'"digest":"{layer_digest}","size":{len(layer)}}}]}}'
    ).encode()
    return store.put(manifest).digest, config_digest, layer_digest


def test_tag_resolve_untag(store: LayerStore) -> None:
    manifest, _, _ = put_image(store, b"layer one")
    descriptor = store.tag("app:v1", manifest)
    assert descriptor.tag == "app:v1"
    assert descriptor.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert store.resolve("app:v1").digest == manifest
    assert [d.tag for d in store.tags()] == ["app:v1"]
    assert store.untag("app:v1")
    with pytest.raises(errors.TagNotFoundError) as caught:
        store.resolve("app:v1")
    assert caught.value.tag == "app:v1"


def test_tag_rejects_invalid_names(store: LayerStore) -> None:
    manifest, _, _ = put_image(store, b"layer")
    with pytest.raises(errors.InvalidTagError, match="may contain only"):
        store.tag("has space", manifest)


def test_delete_refuses_blob_of_tagged_image(store: LayerStore) -> None:
    manifest, _, layer = put_image(store, b"shared layer")
    store.tag("app", manifest)
    with pytest.raises(errors.BlobInUseError) as caught:
        store.delete(layer)
    assert caught.value.referenced_by == manifest
    assert store.has(layer)
    assert store.delete(layer, force=True)
    report = store.verify()
    assert [(p.kind, p.digest) for p in report.problems] == [("missing", layer)]


def test_gc_removes_unreachable_blobs(store: LayerStore) -> None:
    kept, kept_config, kept_layer = put_image(store, b"kept layer")
    dropped, _, dropped_layer = put_image(store, b"dropped layer")
    store.tag("kept", kept)
    report = store.gc(grace_period_s=0)
    removed = {blob.digest for blob in report.removed_blobs}
    assert removed == {dropped, dropped_layer}  # the config is shared by both images
    assert all(store.has(d) for d in (kept, kept_config, kept_layer))


def test_gc_rejects_negative_durations(store: LayerStore) -> None:
    with pytest.raises(ValueError, match="grace_period_s"):
        store.gc(grace_period_s=-1)


def test_verify_reports_and_quarantines_corruption(store: LayerStore) -> None:
    manifest, _, layer = put_image(store, b"x" * 1000)
    store.tag("img", manifest)
    path = Path(store.path(layer))
    path.chmod(0o644)
    path.write_bytes(b"x" * 10)
    report = store.verify(quarantine=True)
    assert not report.ok
    assert [(p.kind, p.expected_size, p.actual_size) for p in report.problems] == [
        ("truncated", 1000, 10)
    ]
    assert len(report.quarantined) == 1
    assert not path.exists()
    assert Path(report.quarantined[0]).read_bytes() == b"x" * 10


def test_usage_counts_blobs(store: LayerStore) -> None:
    store.put(b"a" * 100)
    store.put(b"b" * 50)
    usage = store.usage()
    assert (usage.blobs, usage.blob_bytes) == (2, 150)
    assert usage.ingest_files == 0


def test_store_in_foreign_directory_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "unrelated.txt").write_text("data")
    with pytest.raises(errors.InvalidLayoutError, match="not empty"):
        LayerStore(tmp_path)


def test_io_errors_carry_errno_and_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(errors.StoreIOError) as caught:
        LayerStore(blocker / "store")
    assert isinstance(caught.value, OSError)
    assert caught.value.errno is not None
    assert str(blocker) in str(caught.value)


def test_blocking_calls_release_the_gil(store: LayerStore) -> None:
    """Two threads putting large blobs run at the same time, which needs the GIL released."""
    payloads = [os.urandom(96 << 20), os.urandom(96 << 20)]
    spans: list[tuple[float, float]] = [(0.0, 0.0), (0.0, 0.0)]
    start = threading.Barrier(2)

    def put(index: int) -> None:
        start.wait()
        began = time.perf_counter()
        store.put(payloads[index])
        spans[index] = (began, time.perf_counter())

    threads = [threading.Thread(target=put, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latest_start = max(span[0] for span in spans)
    earliest_end = min(span[1] for span in spans)
    assert latest_start < earliest_end, f"calls ran one after the other: {spans}"

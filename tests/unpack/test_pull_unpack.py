"""Pull with overlapped unpack against a fake registry that pauses, corrupts or is cancelled."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.pull.helpers import ingest_leftovers, pull
from tests.registry import faults
from tests.registry.fake import FakeRegistry
from tests.registry.layout import OCI_MANIFEST, build_image, canonical_json, digest_of
from tests.registry.real import RegistryRepository
from tests.unpack.layers import (
    Member,
    Model,
    leave_interrupted_run,
    scan,
    tar_bytes,
    target_state,
)
from tests.unpack.test_unpack import HOSTILE
from warmstart import LayerStore, PullReport, UnpackReport, errors

MIB = 1 << 20
# The tar entries up to the end of a/first take well under this many bytes, so a body paused
# here has delivered the first entry plus more than the 1 MiB the decompressing thread hands on.
PAUSE_AT = 3 * MIB


def streaming_layer() -> bytes:
    """An uncompressed tar: a directory, a small file, then 6 MiB of random file data."""
    return tar_bytes(
        [
            Member("a", tarfile.DIRTYPE, mode=0o755),
            Member("a/first", data=b"first entry"),
            Member("a/big1", data=os.urandom(3 * MIB)),
            Member("a/big2", data=os.urandom(3 * MIB)),
        ]
    )


def partials(target: Path) -> list[Path]:
    return sorted((target / "layers").glob(".partial-*"))


def staged(target: Path, name: str) -> bool:
    """Return whether a staging directory of `target` contains `name`."""
    return any((partial / name).exists() for partial in partials(target))


def staged_size(target: Path, name: str) -> int:
    """Return the size of `name` in a staging directory of `target`, 0 when there is none."""
    sizes = [(p / name).stat().st_size for p in partials(target) if (p / name).is_file()]
    return max(sizes, default=0)


def published(target: Path) -> list[str]:
    """Names of the layer directories published in `target`."""
    layers = target / "layers"
    if not layers.is_dir():
        return []
    return sorted(p.name for p in layers.iterdir() if not p.name.startswith(".partial-"))


def expected_entries(*layers: bytes) -> dict[str, tuple[object, ...]]:
    model = Model()
    for layer in layers:
        model.apply(layer)
    return model.entries


async def wait_until(
    condition: Callable[[], bool], what: str, task: asyncio.Task[Any] | None = None
) -> None:
    """Poll `condition` for up to 20 s; a `task` that ends first fails the test with its result."""
    deadline = time.monotonic() + 20
    while not condition():
        if task is not None and task.done():
            pytest.fail(f"the pull ended before {what}: {task.result()!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within 20 s")
        await asyncio.sleep(0.01)


def pull_and_unpack(
    store: LayerStore, reference: str, target: Path, **options: Any
) -> tuple[PullReport, UnpackReport]:
    async def run() -> tuple[PullReport, UnpackReport]:
        return await store.pull_and_unpack(reference, target, **options)

    return asyncio.run(run())


def test_layer_extracts_before_blob_commits(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    layer = streaming_layer()
    image = fake_registry.add_image("app", "v1", [layer], compress=False)
    digest = image.layers[0].digest
    pause = fake_registry.add_fault(faults.Pause(digest, times=1, after_bytes=PAUSE_AT))
    target = tmp_path / "out"

    async def run() -> tuple[bool, UnpackReport]:
        task = asyncio.create_task(store.pull_and_unpack(f"{fake_registry.host}/app:v1", target))
        await wait_until(lambda: staged(target, "a/first"), "extraction of a/first", task)
        committed_while_paused = store.has(digest)
        pause.release.set()
        _, unpacked = await task
        return committed_while_paused, unpacked

    committed_while_paused, unpacked = asyncio.run(run())

    assert pause.fired == 1
    assert not committed_while_paused
    (report,) = unpacked.layers
    assert not report.reused
    assert report.entries == 4
    assert report.uncompressed_bytes == len(layer)
    assert published(target) == [digest_of(layer).removeprefix("sha256:")]
    assert scan(target / "layers" / published(target)[0]) == expected_entries(layer)
    assert (target / "lowerdir").is_file()
    assert partials(target) == []


def test_corrupt_blob_mid_stream_publishes_nothing(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    layer = streaming_layer()
    image = fake_registry.add_image("app", "v1", [layer], compress=False)
    digest = image.layers[0].digest
    # The flipped byte sits in the data of a/big2, so the tar stays valid and only the digest
    # check can catch it.
    corrupt = fake_registry.add_fault(faults.WrongBytes(digest, offset=5 * MIB))
    pause = fake_registry.add_fault(faults.Pause(digest, times=1, after_bytes=PAUSE_AT))
    target = tmp_path / "out"

    async def run() -> None:
        task = asyncio.create_task(store.pull_and_unpack(f"{fake_registry.host}/app:v1", target))
        await wait_until(lambda: staged(target, "a/first"), "extraction of a/first", task)
        pause.release.set()
        await task

    with pytest.raises(errors.DigestMismatchError):
        asyncio.run(run())

    assert corrupt.fired >= 1
    assert published(target) == []
    assert partials(target) == []
    assert not (target / "lowerdir").exists()
    assert not store.has(digest)
    assert [name for name in ingest_leftovers(store) if digest[7:] in name] == []


def test_diff_id_mismatch_publishes_nothing(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    layer = streaming_layer()
    good = build_image([layer], compress=False)
    assert good.config is not None
    config = json.loads(good.blobs[good.config.digest])
    config["rootfs"]["diff_ids"] = [digest_of(b"some other layer")]
    config_bytes = canonical_json(config)
    manifest = json.loads(good.manifest)
    manifest["config"]["digest"] = digest_of(config_bytes)
    manifest["config"]["size"] = len(config_bytes)
    fake_registry.add_blob("app", config_bytes)
    fake_registry.add_blob("app", layer)
    fake_registry.add_manifest("app", canonical_json(manifest), OCI_MANIFEST, tag="v1")
    target = tmp_path / "out"

    with pytest.raises(errors.DiffIdMismatchError) as raised:
        pull_and_unpack(store, f"{fake_registry.host}/app:v1", target)

    assert digest_of(layer) in str(raised.value)
    assert published(target) == []
    assert partials(target) == []
    assert not (target / "lowerdir").exists()


def test_cancel_mid_stream_then_rerun(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    layer = streaming_layer()
    image = fake_registry.add_image("app", "v1", [layer], compress=False)
    digest = image.layers[0].digest
    pause = fake_registry.add_fault(faults.Pause(digest, times=1, after_bytes=PAUSE_AT))
    target = tmp_path / "out"
    reference = f"{fake_registry.host}/app:v1"

    async def cancel_mid_stream() -> list[str]:
        task = asyncio.create_task(store.pull_and_unpack(reference, target))
        await wait_until(lambda: staged(target, "a/first"), "extraction of a/first", task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after_cancel = published(target)
        await wait_until(lambda: not partials(target), "removal of the staging directory")
        pause.release.set()
        return after_cancel

    assert asyncio.run(cancel_mid_stream()) == []
    assert not (target / "lowerdir").exists()
    assert not store.has(digest)

    _, unpacked = pull_and_unpack(store, reference, target)
    assert [layer.reused for layer in unpacked.layers] == [False]
    assert scan(target / "layers" / published(target)[0]) == expected_entries(layer)
    assert (target / "lowerdir").is_file()


def many_files_layer(count: int) -> bytes:
    """An uncompressed tar: a/first, then `count` files of 4 KiB, slow to extract file by file."""
    members = [Member("a", tarfile.DIRTYPE, mode=0o755), Member("a/first", data=b"first entry")]
    members += [Member(f"a/f{index:05}", data=os.urandom(4096)) for index in range(count)]
    return tar_bytes(members)


def test_cancel_stops_extraction_of_committed_blob(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    # The blob is in the store before the pull, so its reader never waits for a download that
    # a cancel could fail: only the cancel itself can stop the extraction. The blob (28 MiB) is
    # well over what the decompressing thread reads ahead of the files written (9 MiB).
    layer = many_files_layer(6_000)
    fake_registry.add_image("app", "v1", [layer], compress=False)
    reference = f"{fake_registry.host}/app:v1"
    pull(store, reference)
    target = tmp_path / "out"

    async def cancel_mid_extraction() -> int:
        task = asyncio.create_task(store.pull_and_unpack(reference, target))
        await wait_until(lambda: staged(target, "a/first"), "extraction of a/first", task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: not partials(target), "removal of the staging directory")
        return len(published(target))

    assert asyncio.run(cancel_mid_extraction()) == 0
    assert not (target / "lowerdir").exists()


def test_far_chunks_first_wait_for_prefix(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    layer = streaming_layer()
    image = fake_registry.add_image("app", "v1", [layer], compress=False)
    digest = image.layers[0].digest
    chunk = 256 << 10
    assert len(layer) > chunk
    # The first request of the blob is the probe for the range at byte 0.
    pause = fake_registry.add_fault(faults.Pause(digest, times=1, after_bytes=0))
    target = tmp_path / "out"

    def later_chunks_done() -> bool:
        served = 0
        for request in fake_registry.blob_requests(digest):
            if request.status != 206 or request.range is None:
                continue
            if request.range.startswith("bytes=0-"):
                continue
            start, end = request.range.removeprefix("bytes=").split("-")
            served += int(end) + 1 - int(start)
        return served == len(layer) - chunk

    async def run() -> tuple[bool, bool, UnpackReport]:
        task = asyncio.create_task(
            store.pull_and_unpack(f"{fake_registry.host}/app:v1", target, chunk_size=chunk)
        )
        await wait_until(later_chunks_done, "every chunk but the first", task)
        extracted_early = staged(target, "a/first")
        committed_early = store.has(digest)
        pause.release.set()
        _, unpacked = await task
        return extracted_early, committed_early, unpacked

    extracted_early, committed_early, unpacked = asyncio.run(run())

    assert pause.paused.is_set()
    assert not extracted_early
    assert not committed_early
    assert [layer.entries for layer in unpacked.layers] == [4]
    assert scan(target / "layers" / published(target)[0]) == expected_entries(layer)


def test_restart_from_byte_zero_mid_stream(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    layer = streaming_layer()
    image = fake_registry.add_image("app", "v1", [layer], compress=False)
    digest = image.layers[0].digest
    # One whole-blob request (the blob is smaller than a chunk) cut short: the fetcher cannot
    # resume it, so it restarts from byte 0 while the extraction has read part of it.
    cut = fake_registry.add_fault(faults.TruncateBody(digest, times=1, after_bytes=PAUSE_AT))
    target = tmp_path / "out"

    _, unpacked = pull_and_unpack(store, f"{fake_registry.host}/app:v1", target)

    assert cut.fired == 1
    assert len(fake_registry.blob_requests(digest)) == 2
    assert [layer.entries for layer in unpacked.layers] == [4]
    assert scan(target / "layers" / published(target)[0]) == expected_entries(layer)


def test_restart_after_wrong_bytes_read(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    layer = streaming_layer()
    image = fake_registry.add_image("app", "v1", [layer], compress=False)
    digest = image.layers[0].digest
    # The first whole-blob request flips a byte in the data of a/big1, pauses until the
    # extraction has written that byte, and is then cut short. The fetcher cannot resume it, so
    # it restarts from byte 0 and gets the right bytes. An extraction that went on reading
    # after the restart would have the flipped byte in its tar stream and fail the diff_id.
    flipped = fake_registry.add_fault(faults.WrongBytes(digest, times=1, offset=MIB // 2))
    pause = fake_registry.add_fault(faults.Pause(digest, times=1, after_bytes=PAUSE_AT))
    cut = fake_registry.add_fault(faults.TruncateBody(digest, times=1, after_bytes=PAUSE_AT))
    target = tmp_path / "out"

    async def run() -> UnpackReport:
        task = asyncio.create_task(store.pull_and_unpack(f"{fake_registry.host}/app:v1", target))
        await wait_until(
            lambda: staged_size(target, "a/big1") >= MIB, "extraction past the flip", task
        )
        pause.release.set()
        _, unpacked = await task
        return unpacked

    unpacked = asyncio.run(run())

    assert flipped.fired == 1
    assert cut.fired == 1
    assert len(fake_registry.blob_requests(digest)) == 2
    assert [layer.entries for layer in unpacked.layers] == [4]
    assert published(target) == [digest_of(layer).removeprefix("sha256:")]
    assert scan(target / "layers" / published(target)[0]) == expected_entries(layer)
    assert partials(target) == []


def test_layer_in_store_extracts_from_blob(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    base = tar_bytes([Member("file", data=b"base layer")])
    app = streaming_layer()
    fake_registry.add_image("app", "v1", [base], compress=False)
    pull(store, f"{fake_registry.host}/app:v1")
    image = fake_registry.add_image("app", "v2", [base, app], compress=False)
    target = tmp_path / "out"

    pulled, unpacked = pull_and_unpack(store, f"{fake_registry.host}/app:v2", target)

    reused = {blob.digest: blob.reused for blob in pulled.blobs}
    assert reused[image.layers[0].digest]
    assert not reused[image.layers[1].digest]
    assert [layer.reused for layer in unpacked.layers] == [False, False]
    assert [layer.entries for layer in unpacked.layers] == [1, 4]
    for layer in (base, app):
        hex_digest = digest_of(layer).removeprefix("sha256:")
        assert scan(target / "layers" / hex_digest) == expected_entries(layer)
    lowerdir = (target / "lowerdir").read_text().strip().split(":")
    assert [Path(path).name for path in lowerdir] == [
        digest_of(app).removeprefix("sha256:"),
        digest_of(base).removeprefix("sha256:"),
    ]


def test_target_of_other_image_stops_pull(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    fake_registry.add_image("app", "v1", [tar_bytes([Member("one", data=b"1")])], compress=False)
    image = fake_registry.add_image("app", "v2", [streaming_layer()], compress=False)
    digest = image.layers[0].digest
    target = tmp_path / "out"
    pull_and_unpack(store, f"{fake_registry.host}/app:v1", target)
    # Held until released or 25 s: a pull that only checked the target at its end would wait.
    pause = fake_registry.add_fault(faults.Pause(digest, times=1, after_bytes=0))

    started = time.monotonic()
    with pytest.raises(errors.UnpackTargetError) as caught:
        pull_and_unpack(store, f"{fake_registry.host}/app:v2", target)
    seconds = time.monotonic() - started
    pause.release.set()

    assert "holds image" in str(caught.value)
    assert seconds < 20, "the pull went on after the target was found to hold another image"
    assert not store.has(digest)
    assert json.loads((target / "image.json").read_text())["manifest"] != image.digest


@pytest.mark.parametrize("flatten", [False, True], ids=["overlay", "flatten"])
def test_rejected_target_keeps_other_image(
    store: LayerStore, registry_repo: RegistryRepository, tmp_path: Path, flatten: bool
) -> None:
    registry_repo.push_generated("v1", [tar_bytes([Member("one", data=b"1")])])
    image = registry_repo.push_generated("v2", [tar_bytes([Member("two", data=b"2")])])
    target = tmp_path / "out"
    pull_and_unpack(store, f"{registry_repo.reference_prefix}:v1", target, flatten=flatten)
    leave_interrupted_run(target)
    before = target_state(target)

    with pytest.raises(errors.UnpackTargetError, match="holds image"):
        pull_and_unpack(store, f"{registry_repo.reference_prefix}:v2", target, flatten=flatten)

    assert target_state(target) == before
    assert json.loads((target / "image.json").read_text())["manifest"] != image.digest


def rootfs_staged(target: Path, name: str) -> bool:
    """Return whether the flatten staging directory of `target` contains `name`."""
    return (target / ".partial-rootfs" / name).exists()


def upper_layer(size: int) -> bytes:
    """A layer over `streaming_layer` that hides a/big1 and adds a file of `size` bytes."""
    return tar_bytes([Member("a/.wh.big1"), Member("b", data=os.urandom(size))])


def test_flatten_applies_layer_while_downloading(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    base, upper = streaming_layer(), upper_layer(4096)
    image = fake_registry.add_image("app", "v1", [base, upper], compress=False)
    digest = image.layers[0].digest
    pause = fake_registry.add_fault(faults.Pause(digest, times=1, after_bytes=PAUSE_AT))
    target = tmp_path / "out"

    async def run() -> tuple[bool, UnpackReport]:
        task = asyncio.create_task(
            store.pull_and_unpack(f"{fake_registry.host}/app:v1", target, flatten=True)
        )
        await wait_until(lambda: rootfs_staged(target, "a/first"), "flatten of a/first", task)
        committed_while_paused = store.has(digest)
        pause.release.set()
        _, unpacked = await task
        return committed_while_paused, unpacked

    committed_while_paused, unpacked = asyncio.run(run())

    assert pause.fired == 1
    assert not committed_while_paused
    assert unpacked.layout == "flatten"
    assert [layer.reused for layer in unpacked.layers] == [False, False]
    assert [layer.entries for layer in unpacked.layers] == [4, 2]
    assert scan(target / "rootfs") == expected_entries(base, upper)
    assert not (target / ".partial-rootfs").exists()


def test_flatten_waits_for_earlier_layer(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    # The upper layer is the larger, so the pull finishes it first. Its whiteout must still
    # apply after the base layer, whose a/big1 it hides.
    base, upper = streaming_layer(), upper_layer(8 * MIB)
    image = fake_registry.add_image("app", "v1", [base, upper], compress=False)
    base_digest, upper_digest = image.layers[0].digest, image.layers[1].digest
    pause = fake_registry.add_fault(faults.Pause(base_digest, times=1, after_bytes=PAUSE_AT))
    target = tmp_path / "out"

    async def run() -> bool:
        task = asyncio.create_task(
            store.pull_and_unpack(f"{fake_registry.host}/app:v1", target, flatten=True)
        )
        await wait_until(lambda: store.has(upper_digest), "commit of the upper layer", task)
        await wait_until(lambda: rootfs_staged(target, "a/first"), "flatten of a/first", task)
        upper_applied_early = rootfs_staged(target, "b")
        pause.release.set()
        await task
        return upper_applied_early

    assert not asyncio.run(run())
    assert pause.fired == 1
    assert scan(target / "rootfs") == expected_entries(base, upper)
    assert "a/big1" not in scan(target / "rootfs")


def test_flatten_corrupt_blob_publishes_nothing(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    layer = streaming_layer()
    image = fake_registry.add_image("app", "v1", [layer], compress=False)
    digest = image.layers[0].digest
    corrupt = fake_registry.add_fault(faults.WrongBytes(digest, offset=5 * MIB))
    pause = fake_registry.add_fault(faults.Pause(digest, times=1, after_bytes=PAUSE_AT))
    target = tmp_path / "out"

    async def run() -> None:
        task = asyncio.create_task(
            store.pull_and_unpack(f"{fake_registry.host}/app:v1", target, flatten=True)
        )
        await wait_until(lambda: rootfs_staged(target, "a/first"), "flatten of a/first", task)
        pause.release.set()
        await task

    with pytest.raises(errors.DigestMismatchError):
        asyncio.run(run())

    assert corrupt.fired >= 1
    assert not (target / "rootfs").exists()
    assert not (target / ".partial-rootfs").exists()
    assert not store.has(digest)


def test_flatten_cancel_mid_stream_then_rerun(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    layer = streaming_layer()
    image = fake_registry.add_image("app", "v1", [layer], compress=False)
    pause = fake_registry.add_fault(
        faults.Pause(image.layers[0].digest, times=1, after_bytes=PAUSE_AT)
    )
    target = tmp_path / "out"
    reference = f"{fake_registry.host}/app:v1"

    async def cancel_mid_stream() -> None:
        task = asyncio.create_task(store.pull_and_unpack(reference, target, flatten=True))
        await wait_until(lambda: rootfs_staged(target, "a/first"), "flatten of a/first", task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(
            lambda: not (target / ".partial-rootfs").exists(), "removal of the staging directory"
        )
        pause.release.set()

    asyncio.run(cancel_mid_stream())
    assert not (target / "rootfs").exists()

    _, unpacked = pull_and_unpack(store, reference, target, flatten=True)
    assert [layer.reused for layer in unpacked.layers] == [False]
    assert scan(target / "rootfs") == expected_entries(layer)


def test_flatten_restart_after_wrong_bytes_read(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    # As in test_restart_after_wrong_bytes_read: the flatten reads past a flipped byte, then
    # the download restarts from byte 0. Only a flatten that starts again from the committed
    # blob gets the right tree; one that went on reading fails the diff_id.
    base, upper = streaming_layer(), upper_layer(4096)
    image = fake_registry.add_image("app", "v1", [base, upper], compress=False)
    digest = image.layers[0].digest
    flipped = fake_registry.add_fault(faults.WrongBytes(digest, times=1, offset=MIB // 2))
    pause = fake_registry.add_fault(faults.Pause(digest, times=1, after_bytes=PAUSE_AT))
    cut = fake_registry.add_fault(faults.TruncateBody(digest, times=1, after_bytes=PAUSE_AT))
    target = tmp_path / "out"
    big1 = target / ".partial-rootfs" / "a" / "big1"

    async def run() -> None:
        task = asyncio.create_task(
            store.pull_and_unpack(f"{fake_registry.host}/app:v1", target, flatten=True)
        )
        await wait_until(
            lambda: big1.is_file() and big1.stat().st_size >= MIB, "flatten past the flip", task
        )
        pause.release.set()
        await task

    asyncio.run(run())

    assert flipped.fired == 1
    assert cut.fired == 1
    assert len(fake_registry.blob_requests(digest)) == 2
    assert scan(target / "rootfs") == expected_entries(base, upper)
    assert not (target / ".partial-rootfs").exists()


def test_flatten_failed_pull_removes_staging(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    base, upper = streaming_layer(), upper_layer(8 * MIB)
    image = fake_registry.add_image("app", "v1", [base, upper], compress=False)
    pause = fake_registry.add_fault(
        faults.Pause(image.layers[0].digest, times=1, after_bytes=PAUSE_AT)
    )
    fake_registry.add_fault(faults.WrongBytes(image.layers[1].digest))
    target = tmp_path / "out"

    async def run() -> None:
        task = asyncio.create_task(
            store.pull_and_unpack(f"{fake_registry.host}/app:v1", target, flatten=True)
        )
        await wait_until(lambda: rootfs_staged(target, "a/first"), "flatten of a/first", task)
        await task

    # The staging directory is gone when the error is raised, not some time after.
    with pytest.raises(errors.DigestMismatchError):
        asyncio.run(run())
    pause.release.set()

    assert not (target / ".partial-rootfs").exists()
    assert not (target / "rootfs").exists()


@pytest.mark.parametrize(("members", "entry", "reason"), HOSTILE)
def test_flatten_hostile_layer_rejected(
    store: LayerStore,
    fake_registry: FakeRegistry,
    tmp_path: Path,
    members: list[Member],
    entry: str,
    reason: str,
) -> None:
    fake_registry.add_image("app", "v1", [streaming_layer(), tar_bytes(members)], compress=False)
    target = tmp_path / "out"

    with pytest.raises(errors.UnsafeEntryError) as caught:
        pull_and_unpack(store, f"{fake_registry.host}/app:v1", target, flatten=True)

    assert caught.value.entry == entry
    assert reason in caught.value.reason
    assert not (target / "rootfs").exists()
    assert not (target / ".partial-rootfs").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "store"]


def test_flatten_two_images_one_target(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    base, upper = streaming_layer(), upper_layer(4096)
    first = fake_registry.add_image("app", "one", [base, upper], compress=False)
    fake_registry.add_image("app", "two", [tar_bytes([Member("two", data=b"2")])])
    pause = fake_registry.add_fault(
        faults.Pause(first.layers[0].digest, times=1, after_bytes=PAUSE_AT)
    )
    target = tmp_path / "out"

    async def run() -> BaseException | None:
        first_pull = asyncio.create_task(
            store.pull_and_unpack(f"{fake_registry.host}/app:one", target, flatten=True)
        )
        await wait_until(lambda: rootfs_staged(target, "a/first"), "flatten of a/first", first_pull)
        second_pull = asyncio.create_task(
            store.pull_and_unpack(f"{fake_registry.host}/app:two", target, flatten=True)
        )
        # The second pull waits for the target's lock while the first one is paused.
        await asyncio.sleep(0.2)
        pause.release.set()
        await first_pull
        try:
            await second_pull
        except errors.UnpackTargetError as error:
            return error
        return None

    rejected = asyncio.run(run())

    assert rejected is not None, "the second image was unpacked into the first one's target"
    assert "holds image" in str(rejected)
    assert json.loads((target / "image.json").read_text())["manifest"] == first.digest
    assert scan(target / "rootfs") == expected_entries(base, upper)
    assert not (target / ".partial-rootfs").exists()


def test_flatten_applies_layers_before_last_arrives(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    lower = tar_bytes([Member("one", data=b"1")])
    middle = tar_bytes([Member("two", data=b"2"), Member(".wh.one")])
    last = streaming_layer()
    image = fake_registry.add_image("app", "v1", [lower, middle, last], compress=False)
    pause = fake_registry.add_fault(faults.Pause(image.layers[2].digest, times=1, after_bytes=0))
    target = tmp_path / "out"

    async def run() -> bool:
        task = asyncio.create_task(
            store.pull_and_unpack(f"{fake_registry.host}/app:v1", target, flatten=True)
        )
        await wait_until(pause.paused.is_set, "the pause of the last layer", task)
        await wait_until(lambda: rootfs_staged(target, "two"), "flatten of the middle", task)
        whiteout_applied = not rootfs_staged(target, "one")
        pause.release.set()
        await task
        return whiteout_applied

    assert asyncio.run(run())
    assert scan(target / "rootfs") == expected_entries(lower, middle, last)


WARMSTART_PULL = [sys.executable, "-m", "warmstart", "pull"]


def test_flatten_sigkill_then_rerun(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    base, upper = streaming_layer(), upper_layer(4096)
    image = fake_registry.add_image("app", "v1", [base, upper])
    pause = fake_registry.add_fault(
        faults.Pause(image.layers[0].digest, times=1, after_bytes=PAUSE_AT)
    )
    reference = f"{fake_registry.host}/app:v1"
    target = tmp_path / "out"
    command = [*WARMSTART_PULL, reference, "--store", str(store.root), "--unpack", str(target)]
    process = subprocess.Popen([*command, "--flatten"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not rootfs_staged(target, "a/first"):
            assert process.poll() is None, "the pull ended before it could be killed"
            assert time.monotonic() < deadline, "no layer was applied within 20 s"
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        pause.release.set()

    assert not (target / "rootfs").exists()

    _, unpacked = pull_and_unpack(store, reference, target, flatten=True)

    assert [layer.reused for layer in unpacked.layers] == [False, False]
    expected = store.unpack(image.digest, tmp_path / "reference", flatten=True)
    assert scan(target / "rootfs") == scan(expected.result)
    assert not (target / ".partial-rootfs").exists()

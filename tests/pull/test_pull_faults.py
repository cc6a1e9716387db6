"""Pulls against a fake registry that misbehaves the way real servers sometimes do."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPOSITORY
from tests.pull.helpers import fetch, ingest_leftovers, pull
from tests.registry import faults
from tests.registry.fake import BasicAuth, BearerAuth, FakeRegistry
from tests.registry.layout import OCI_EMPTY, OCI_LAYER_TAR, OCI_MANIFEST, Content, canonical_json
from warmstart import LayerStore, PullProgress, PullReport, errors
from warmstart.replay.image import chunked_requests

CHUNK = 256 << 10


def big_image(registry: FakeRegistry, size: int = 2 << 20, tag: str = "v1") -> Content:
    """An image whose single uncompressed layer spans several chunks."""
    return registry.add_image("app", tag, [os.urandom(size)], compress=False)


def layer_digest(image: Content) -> str:
    return image.layers[0].digest


def range_starts(registry: FakeRegistry, digest: str) -> list[int]:
    starts = []
    for request in registry.blob_requests(digest):
        if request.range is not None:
            starts.append(int(request.range.removeprefix("bytes=").split("-")[0]))
    return starts


def test_ignored_range_falls_back_to_one_stream(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    image = big_image(fake_registry)
    fault = fake_registry.add_fault(faults.IgnoreRange(layer_digest(image)))
    report = pull(store, f"{fake_registry.host}/app:v1", chunk_size=CHUNK)
    (blob,) = [b for b in report.blobs if b.digest == layer_digest(image)]
    assert fault.fired == 1
    assert not blob.ranged
    assert blob.fetched_bytes == blob.size, "the full body was used once, not spliced into a chunk"
    assert store.read(blob.digest) == fake_registry.blob(blob.digest)
    assert fake_registry.multi_range_requests() == []


@pytest.mark.parametrize("honest_header", [True, False], ids=["honest-header", "lying-header"])
def test_range_at_wrong_offset_is_not_used(
    store: LayerStore, fake_registry: FakeRegistry, honest_header: bool
) -> None:
    image = big_image(fake_registry)
    fake_registry.add_fault(
        faults.WrongRangeStart(layer_digest(image), shift=7, honest_header=honest_header, times=1)
    )
    if honest_header:
        report = pull(store, f"{fake_registry.host}/app:v1", chunk_size=CHUNK)
        assert store.read(layer_digest(image)) == fake_registry.blob(layer_digest(image))
        assert report.blobs
    else:
        # Only the digest can catch a 206 that claims the right range and sends other bytes.
        with pytest.raises(errors.DigestMismatchError):
            pull(store, f"{fake_registry.host}/app:v1", chunk_size=CHUNK)
        assert not store.has(layer_digest(image))


@pytest.mark.parametrize(
    "fault",
    [
        faults.IgnoreRange(skip=2, times=1),
        faults.WrongRangeStart(shift=7, skip=2, times=1),
        faults.NoContentRange(skip=2, times=1),
    ],
    ids=["ignored-range", "wrong-start", "no-content-range"],
)
def test_range_refused_mid_blob_restarts_as_one_stream(
    store: LayerStore, fake_registry: FakeRegistry, fault: faults.Fault
) -> None:
    image = big_image(fake_registry)
    digest = layer_digest(image)
    fault.digest = digest
    fake_registry.add_fault(fault)

    report = pull(store, f"{fake_registry.host}/app:v1", chunk_size=CHUNK)

    (blob,) = [b for b in report.blobs if b.digest == digest]
    assert fault.fired == 1
    assert not blob.ranged
    assert store.read(digest) == fake_registry.blob(digest)
    whole = [r for r in fake_registry.blob_requests(digest) if r.range is None]
    assert len(whole) == 1, "the restart is one request from byte 0"
    assert blob.fetched_bytes >= blob.size


REFUSALS = {
    "ignored-range": faults.IgnoreRange,
    "wrong-start": lambda **options: faults.WrongRangeStart(shift=7, **options),
    "no-content-range": faults.NoContentRange,
}


def assert_progress_within_total(snapshots: list[PullProgress]) -> None:
    """Check that every snapshot stays within the total and the last one reaches it."""
    for snapshot in snapshots:
        counted = snapshot.fetched_bytes + snapshot.reused_bytes
        assert counted <= snapshot.total_bytes, snapshot
    last = snapshots[-1]
    assert last.finished
    assert last.fetched_bytes + last.reused_bytes == last.total_bytes, last


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(refusal=st.sampled_from(sorted(REFUSALS)), skip=st.integers(min_value=1, max_value=7))
def test_progress_after_restart_stays_within_total(
    fake_registry: FakeRegistry, refusal: str, skip: int
) -> None:
    # One connection makes the ranges before the refusal finish first, so their bytes are
    # written and then discarded by the restart.
    fake_registry.clear_faults()
    image = big_image(fake_registry)
    digest = layer_digest(image)
    fault = fake_registry.add_fault(REFUSALS[refusal](digest=digest, skip=skip, times=1))
    snapshots: list[PullProgress] = []

    with tempfile.TemporaryDirectory() as root:
        store = LayerStore(Path(root) / "store")
        pull(
            store,
            f"{fake_registry.host}/app:v1",
            chunk_size=CHUNK,
            connections=1,
            progress=snapshots.append,
        )
        assert store.read(digest) == fake_registry.blob(digest)

    assert fault.fired == 1
    assert snapshots[-1].reused_bytes == 0
    assert_progress_within_total(snapshots)


def test_refused_range_stops_other_ranges(store: LayerStore, fake_registry: FakeRegistry) -> None:
    image = big_image(fake_registry, size=4 << 20)
    digest = layer_digest(image)
    # The probe delivers a few bytes and then withholds the rest, so the blob's first range is
    # still running when the next range request gets the whole blob back.
    pause = fake_registry.add_fault(faults.Pause(digest, times=1, after_bytes=1000))
    refused = fake_registry.add_fault(faults.IgnoreRange(digest, skip=1, times=1))

    async def run() -> tuple[bool, list[str | None]]:
        task = asyncio.create_task(
            store.pull(f"{fake_registry.host}/app:v1", chunk_size=CHUNK, connections=2)
        )
        deadline = time.monotonic() + 10
        restarted = False
        while time.monotonic() < deadline and not task.done():
            if any(r.range is None for r in fake_registry.blob_requests(digest)):
                restarted = True
                break
            await asyncio.sleep(0.01)
        requested = [r.range for r in fake_registry.blob_requests(digest)]
        pause.release.set()
        await task
        return restarted, requested

    restarted, requested = asyncio.run(run())

    assert refused.fired == 1
    assert restarted, f"no request from byte 0 while the first range was held: {requested}"
    assert len(requested) <= 4, f"ranges went on after the refusal: {requested}"
    assert store.read(digest) == fake_registry.blob(digest)


def test_truncated_range_fetches_only_missing_bytes(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    image = big_image(fake_registry)
    digest = layer_digest(image)
    fault = fake_registry.add_fault(faults.TruncateBody(digest, after_bytes=100_000, times=1))
    pull(store, f"{fake_registry.host}/app:v1", chunk_size=CHUNK, connections=1)
    assert fault.fired == 1
    starts = range_starts(fake_registry, digest)
    assert 100_000 in starts, f"expected a request continuing at byte 100000, got {starts}"
    assert starts.count(0) == 1, "the truncated range was not restarted from its start"
    assert store.read(digest) == fake_registry.blob(digest)


def test_429_waits_for_retry_after(store: LayerStore, fake_registry: FakeRegistry) -> None:
    image = big_image(fake_registry, size=100_000)
    fault = fake_registry.add_fault(
        faults.TooManyRequests(layer_digest(image), retry_after_s=1, times=1)
    )
    started = time.monotonic()
    pull(store, f"{fake_registry.host}/app:v1")
    assert fault.fired == 1
    assert time.monotonic() - started >= 0.9
    assert store.has(layer_digest(image))


def test_503_twice_then_success(store: LayerStore, fake_registry: FakeRegistry) -> None:
    big_image(fake_registry, size=100_000)
    fault = fake_registry.add_fault(faults.ServiceUnavailable(digest="v1", times=2))
    report = pull(store, f"{fake_registry.host}/app:v1")
    assert fault.fired == 2
    assert store.resolve(report.tag).digest == report.manifest_digest


def test_persistent_500_reports_status_and_repository(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    big_image(fake_registry, size=1000)
    fault = fake_registry.add_fault(faults.ManifestServerError(digest="v1"))
    with pytest.raises(errors.RegistryError) as caught:
        pull(store, f"{fake_registry.host}/app:v1", max_attempts=3)
    assert fault.fired == 3
    assert caught.value.status == 500
    assert caught.value.repository == "app"
    message = str(caught.value)
    assert "gave up after 3 attempts" in message
    assert "HTTP 500" in message


def test_expired_token_is_refreshed_without_restarting_chunks(store: LayerStore) -> None:
    with FakeRegistry(auth=BearerAuth()) as registry:
        image = big_image(registry)
        digest = layer_digest(image)
        fault = registry.add_fault(faults.ExpireTokens(after_requests=3))
        pull(store, f"{registry.host}/app:v1", chunk_size=CHUNK, connections=2)
        assert fault.fired >= 1
        completed = [
            request.range for request in registry.blob_requests(digest) if request.status == 206
        ]
        assert len(completed) == len(set(completed)), "a finished range was fetched twice"
        token_requests = [r for r in registry.requests if r.path == "/token"]
        assert len(token_requests) >= 2
        assert store.read(digest) == registry.blob(digest)


def test_redirect_does_not_leak_registry_credentials(store: LayerStore) -> None:
    with FakeRegistry(auth=BearerAuth()) as registry:
        image = big_image(registry)
        fault = registry.add_fault(faults.RedirectToStorage(layer_digest(image)))
        pull(store, f"{registry.host}/app:v1", chunk_size=CHUNK)
        assert fault.fired >= 1
        assert registry.rejected_storage_authorization == 0
        storage = [r for r in registry.requests if r.server == "storage"]
        assert storage
        assert not any(request.authorization for request in storage)
        assert store.has(layer_digest(image))


def test_wrong_bytes_fail_with_digest_mismatch_and_leave_nothing(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    image = big_image(fake_registry)
    fake_registry.add_fault(faults.WrongBytes(layer_digest(image)))
    with pytest.raises(errors.DigestMismatchError) as caught:
        pull(store, f"{fake_registry.host}/app:v1", chunk_size=CHUNK)
    assert caught.value.expected == layer_digest(image)
    assert not store.has(layer_digest(image))
    assert [name for name in ingest_leftovers(store) if name.endswith(".data")] == []
    assert store.tags() == []


def test_content_length_disagreeing_with_descriptor(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    image = big_image(fake_registry, size=50_000)
    fake_registry.add_fault(faults.WrongContentLength(layer_digest(image), delta=10))
    with pytest.raises(errors.SizeMismatchError) as caught:
        pull(store, f"{fake_registry.host}/app:v1")
    assert caught.value.expected == 50_000
    assert caught.value.actual == 50_010
    assert not store.has(layer_digest(image))


@pytest.mark.parametrize("chunk_size", [16 << 20, 64 << 10], ids=["one-stream", "ranged"])
def test_overstated_blob_size_leaves_no_partial(
    store: LayerStore, fake_registry: FakeRegistry, chunk_size: int
) -> None:
    # The partial file is allocated at the descriptor's size, 20 MiB here for a 100 kB blob, and
    # can never complete, so it must not stay in ingest/ for a resume.
    claimed = 20 << 20
    layer = fake_registry.add_blob("app", os.urandom(100_000))
    config = fake_registry.add_blob("app", b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_EMPTY, "digest": config, "size": 2},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": layer, "size": claimed}],
    }
    fake_registry.add_manifest("app", canonical_json(manifest), OCI_MANIFEST, "v1")

    with pytest.raises(errors.SizeMismatchError) as caught:
        pull(store, f"{fake_registry.host}/app:v1", chunk_size=chunk_size)

    assert caught.value.expected == claimed
    assert caught.value.actual == 100_000
    hex_digest = layer.split(":", 1)[1]
    assert [
        name for name in ingest_leftovers(store) if hex_digest in name and ".lock" not in name
    ] == []


def test_empty_body_is_retried_then_reported(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    image = big_image(fake_registry, size=50_000)
    fault = fake_registry.add_fault(faults.EmptyBody(layer_digest(image)))
    with pytest.raises(errors.RegistryError) as caught:
        pull(store, f"{fake_registry.host}/app:v1", max_attempts=2)
    assert fault.fired == 2
    assert "gave up after 2 attempts" in str(caught.value)
    assert not store.has(layer_digest(image))


def test_stalled_body_is_abandoned_and_continued(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    image = big_image(fake_registry)
    digest = layer_digest(image)
    fault = fake_registry.add_fault(faults.Stall(digest, seconds=5, after_bytes=50_000, times=1))
    started = time.monotonic()
    pull(store, f"{fake_registry.host}/app:v1", chunk_size=CHUNK, stall_timeout_s=0.5)
    assert fault.fired == 1
    assert time.monotonic() - started < 4.5, "the stalled connection was waited out"
    assert store.read(digest) == fake_registry.blob(digest)


def test_basic_credentials_from_environment(
    store: LayerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeRegistry(auth=BasicAuth("alice", "s3cret-pw")) as registry:
        big_image(registry, size=1000)
        monkeypatch.setenv("WARMSTART_REGISTRY_USERNAME", "alice")
        monkeypatch.setenv("WARMSTART_REGISTRY_PASSWORD", "wrong-pw")
        with pytest.raises(errors.RegistryAuthError) as caught:
            pull(LayerStore(store.root), f"{registry.host}/app:v1")
        assert "wrong-pw" not in str(caught.value)
        assert caught.value.status == 401
        monkeypatch.setenv("WARMSTART_REGISTRY_PASSWORD", "s3cret-pw")
        report = pull(LayerStore(store.root), f"{registry.host}/app:v1")
        assert report.bytes_fetched > 0


def test_bearer_credentials_from_docker_config(
    store: LayerStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeRegistry(auth=BearerAuth(username="bob", password="tok3n")) as registry:
        big_image(registry, size=1000)
        config = tmp_path / "docker"
        config.mkdir()
        auth = base64.b64encode(b"bob:tok3n").decode()
        (config / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(config))
        report = pull(store, f"{registry.host}/app:v1")
        assert report.bytes_fetched > 0
        assert any(r.auth_scheme == "Basic" for r in registry.requests if r.path == "/token")


def test_cancelled_pull_leaves_store_consistent(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    image = big_image(fake_registry)
    digest = layer_digest(image)
    fake_registry.add_fault(faults.Stall(digest, seconds=30, after_bytes=10_000))

    async def start_and_cancel() -> None:
        task = asyncio.ensure_future(store.pull(f"{fake_registry.host}/app:v1", chunk_size=CHUNK))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(start_and_cancel())
    assert time.monotonic() - started < 10
    assert not store.has(digest)
    assert store.tags() == []
    assert store.verify().ok
    fake_registry.clear_faults()
    report = pull(store, f"{fake_registry.host}/app:v1", chunk_size=CHUNK)
    assert store.read(digest) == fake_registry.blob(digest)
    assert report.bytes_fetched <= image.layers[0].size + 10_000


class StallAfterFirst(faults.Stall):
    """A stall for every request of the blob except the first (requests are logged on arrival)."""

    registry: FakeRegistry | None = None

    def applies(self, kind: str, target: str, method: str, has_range: bool) -> bool:
        if not super().applies(kind, target, method, has_range) or self.registry is None:
            return False
        return len(self.registry.blob_requests(target)) > 1


def kill_pull_after_first_range(
    store: LayerStore, fake_registry: FakeRegistry, digest: str
) -> None:
    """Pull in a child process that is killed with SIGKILL once the blob's first range is written.

    The partial file of ``digest`` is left in ``ingest/`` with its first ``CHUNK`` bytes
    recorded as finished. Faults and the request log are cleared afterwards.
    """
    # Every range but the first stalls, so the child finishes range 0 and then hangs.
    stall = fake_registry.add_fault(StallAfterFirst(digest, seconds=60, after_bytes=0))
    stall.registry = fake_registry
    script = (
        "import asyncio, sys\n"
        "from warmstart import LayerStore\n"
        "store = LayerStore(sys.argv[1])\n"
        "async def main():\n"
        "    await store.pull(sys.argv[2], chunk_size=262144, connections=1)\n"
        "asyncio.run(main())\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(store.root), f"{fake_registry.host}/app:v1"],
        cwd=REPOSITORY,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and stall.fired == 0:
            time.sleep(0.05)
        time.sleep(1.0)  # let range 0 be written and logged
    finally:
        child.kill()
        child.wait(timeout=30)
    assert any(name.endswith(".chunks") for name in ingest_leftovers(store))
    fake_registry.clear_faults()
    fake_registry.clear_requests()


def test_killed_pull_resumes_from_finished_ranges(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    size = 2 << 20
    image = big_image(fake_registry, size=size)
    digest = layer_digest(image)
    kill_pull_after_first_range(store, fake_registry, digest)

    report = pull(store, f"{fake_registry.host}/app:v1", chunk_size=CHUNK)

    (blob,) = [b for b in report.blobs if b.digest == digest]
    assert 0 not in range_starts(fake_registry, digest), "range 0 was fetched again"
    assert blob.fetched_bytes <= size - CHUNK
    assert blob.ranged
    assert store.read(digest) == fake_registry.blob(digest)


def test_resume_with_one_range_request_is_ranged(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    size = 2 << 20
    image = big_image(fake_registry, size=size)
    digest = layer_digest(image)
    kill_pull_after_first_range(store, fake_registry, digest)

    # Ranges larger than the missing bytes make the resume a single range request.
    report = pull(store, f"{fake_registry.host}/app:v1", chunk_size=4 << 20)

    (blob,) = [b for b in report.blobs if b.digest == digest]
    assert range_starts(fake_registry, digest) == [CHUNK]
    assert blob.requests == 1
    assert blob.fetched_bytes == size - CHUNK
    assert not blob.reused
    assert blob.ranged
    assert store.read(digest) == fake_registry.blob(digest)


def test_resumed_blob_restart_takes_back_reused_bytes(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    image = big_image(fake_registry)
    digest = layer_digest(image)
    kill_pull_after_first_range(store, fake_registry, digest)
    # The resume's first range request gets the whole blob, so the chunk on disk is discarded
    # and fetched again as part of one stream.
    fault = fake_registry.add_fault(faults.IgnoreRange(digest, times=1))
    snapshots: list[PullProgress] = []

    report = pull(
        store, f"{fake_registry.host}/app:v1", chunk_size=CHUNK, progress=snapshots.append
    )

    (blob,) = [b for b in report.blobs if b.digest == digest]
    assert fault.fired == 1
    assert not blob.ranged
    assert blob.fetched_bytes == blob.size
    assert store.read(digest) == fake_registry.blob(digest)
    assert_progress_within_total(snapshots)
    assert snapshots[-1].reused_bytes == sum(b.size for b in report.blobs if b.reused)


def pull_in_process(root: str, reference: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "warmstart", "pull", reference, "--store", root, "--json"],
        check=True,
        capture_output=True,
        cwd=REPOSITORY,
        timeout=120,
    )


def test_concurrent_pulls_download_each_blob_once(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    image = fake_registry.add_image(
        "app", "v1", [os.urandom(300_000), os.urandom(200_000)], compress=False
    )
    fake_registry.add_fault(faults.Stall(seconds=0.5, after_bytes=1000))
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "warmstart",
                "pull",
                f"{fake_registry.host}/app:v1",
                "--store",
                str(store.root),
                "--json",
            ],
            cwd=REPOSITORY,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    for layer in image.layers:
        assert len(fake_registry.blob_requests(layer.digest)) == 1, layer.digest
    assert store.verify().ok


def test_many_pulls_of_one_image_in_one_process(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    # 32 pulls is as many as LayerStore runs at once. Each pull that finds a blob locked by
    # another waits for it, so 31 pulls of 25 blobs wait 775 times at once while the writers
    # still have to hash and commit.
    pulls = 32
    image = fake_registry.add_image(
        "app", "v1", [os.urandom(20_000 + index) for index in range(24)], compress=False
    )
    fake_registry.add_fault(faults.Stall(seconds=0.5, after_bytes=1000))
    reference = f"{fake_registry.host}/app:v1"

    async def pull_all() -> list[PullReport]:
        pulling = asyncio.gather(*(store.pull(reference) for _ in range(pulls)))
        return await asyncio.wait_for(pulling, timeout=60)

    reports = asyncio.run(pull_all())

    assert len(reports) == pulls
    assert {report.manifest_digest for report in reports} == {image.digest}
    for layer in image.layers:
        assert len(fake_registry.blob_requests(layer.digest)) == 1, layer.digest
        assert store.read(layer.digest) == fake_registry.blob(layer.digest)
    assert store.verify().ok


def test_later_pull_uses_its_own_connections(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    fake_registry.add_image("app", "v1", [os.urandom(1000)], compress=False)
    pull(store, f"{fake_registry.host}/app:v1", connections=1)
    image = big_image(fake_registry, size=8 * CHUNK, tag="v2")
    # Every range of the layer stays open until released, so the open ones show how many
    # connections the pull uses at once.
    pause = fake_registry.add_fault(faults.Pause(layer_digest(image), timeout_s=20))

    async def count_open_requests() -> int:
        pulling = asyncio.ensure_future(
            store.pull(f"{fake_registry.host}/app:v2", connections=4, chunk_size=CHUNK)
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                requests = fake_registry.blob_requests(layer_digest(image))
                open_requests = sum(request.status is None for request in requests)
                if open_requests >= 4:
                    break
                await asyncio.sleep(0.05)
        finally:
            pause.release.set()
        await asyncio.wait_for(pulling, timeout=60)
        return open_requests

    assert asyncio.run(count_open_requests()) == 4
    assert store.read(layer_digest(image)) == fake_registry.blob(layer_digest(image))


def test_blobs_start_config_then_largest(store: LayerStore, fake_registry: FakeRegistry) -> None:
    # Manifest order is not size order, and the config is smaller than every layer. One
    # connection and ranges larger than any blob make the request order the order in which
    # blobs got their first connection.
    sizes = [30_000, 200_000, 10_000, 120_000, 60_000, 90_000, 150_000, 20_000]
    image = fake_registry.add_image(
        "app", "v1", [os.urandom(size) for size in sizes], compress=False
    )
    fake_registry.clear_requests()

    pull(store, f"{fake_registry.host}/app:v1", connections=1, chunk_size=1 << 30)

    assert image.config is not None
    size_of = {blob.digest: blob.size for blob in [image.config, *image.layers]}
    requested = [
        request.path.rsplit("/", 1)[1]
        for request in fake_registry.requests
        if "/blobs/" in request.path and request.method == "GET"
    ]
    assert image.config.size < min(sizes)
    assert requested[0] == image.config.digest
    layer_sizes = [size_of[digest] for digest in requested[1:]]
    assert layer_sizes == sorted(sizes, reverse=True)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    chunks=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=4),
    shorts=st.lists(st.integers(min_value=0, max_value=CHUNK - 1), min_size=4, max_size=4),
    connections=st.integers(min_value=1, max_value=4),
)
def test_chunked_requests_match_model(
    fake_registry: FakeRegistry, chunks: list[int], shorts: list[int], connections: int
) -> None:
    # Over one connection the requests go out one after another, so the registry receives
    # them in the order the connection scheduler hands them out. Over more, they race, so
    # only the ranges themselves must agree (the growing first ones included).
    sizes = [count * CHUNK - short for count, short in zip(chunks, shorts, strict=False)]
    image = fake_registry.add_image(
        "app", "v1", [os.urandom(size) for size in sizes], compress=False
    )
    assert image.config is not None
    blobs = [image.config, *image.layers]
    fake_registry.clear_requests()

    with tempfile.TemporaryDirectory() as root:
        pull(
            LayerStore(Path(root) / "store"),
            f"{fake_registry.host}/app:v1",
            connections=connections,
            chunk_size=CHUNK,
        )

    layer_of = {blob.digest: index for index, blob in enumerate(blobs)}
    sent = []
    for request in fake_registry.requests:
        if "/blobs/" not in request.path or request.method != "GET":
            continue
        layer = layer_of[request.path.rsplit("/", 1)[1]]
        if request.range is None:
            sent.append((layer, 0, blobs[layer].size))
        else:
            start, end = request.range.removeprefix("bytes=").split("-")
            sent.append((layer, int(start), int(end) + 1 - int(start)))
    modeled = [
        (request.layer, request.offset, request.size)
        for request in chunked_requests(
            [blob.size for blob in blobs],
            [False] * len(blobs),
            CHUNK,
            connections=connections,
            config=0,
        )
    ]
    if connections == 1:
        assert sent == modeled
    else:
        assert sorted(sent) == sorted(modeled)


def test_fetch_url_into_store(store: LayerStore, fake_registry: FakeRegistry) -> None:
    weights = os.urandom(1 << 20)
    digest = fake_registry.add_blob("models", weights)
    url = f"{fake_registry.url}/v2/models/blobs/{digest}"
    report = fetch(store, url, digest=digest, chunk_size=CHUNK)
    assert report.size == len(weights)
    assert report.ranged
    assert store.read(digest) == weights
    other = "sha256:" + "0" * 64
    with pytest.raises(errors.DigestMismatchError):
        fetch(store, url, digest=other)
    assert not store.has(other)


def test_cli_pull_json_and_errors(tmp_path: Path, fake_registry: FakeRegistry) -> None:
    big_image(fake_registry, size=10_000)
    command = [sys.executable, "-m", "warmstart", "pull", "--store", str(tmp_path / "s"), "--json"]
    result = subprocess.run(
        [*command, f"{fake_registry.host}/app:v1"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bytes_fetched"] > 0
    assert {"digest", "size", "seconds", "reused", "fetched_bytes"} <= set(report["blobs"][0])
    missing = subprocess.run(
        [*command, f"{fake_registry.host}/app:nope"], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1
    assert missing.stderr.startswith("warmstart: error: GET http://")
    assert "MANIFEST_UNKNOWN" in missing.stderr
    invalid = subprocess.run([*command, "UPPER/case"], capture_output=True, text=True, timeout=60)
    assert invalid.returncode == 2
    assert 'argument reference: invalid reference "UPPER/case"' in invalid.stderr


def test_sha512_addressed_blob(store: LayerStore, fake_registry: FakeRegistry) -> None:
    weights = os.urandom(300_000)
    digest = "sha512:" + hashlib.sha512(weights).hexdigest()
    fake_registry.repository("models").blobs[digest] = weights
    config = b"{}"
    config_digest = fake_registry.add_blob("models", config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.warmstart.model.v1",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/octet-stream", "digest": digest, "size": len(weights)}
            ],
        }
    ).encode()
    fake_registry.add_manifest(
        "models", manifest, "application/vnd.oci.image.manifest.v1+json", "v1"
    )
    report = pull(store, f"{fake_registry.host}/models:v1", chunk_size=CHUNK)
    assert digest in {blob.digest for blob in report.blobs}
    assert store.read(digest) == weights
    assert store.path(digest).parent.name == "sha512"


def test_digest_listed_with_two_sizes_rejected(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    layer = os.urandom(100_000)
    digest = fake_registry.add_blob("app", layer)
    config = b"{}"
    config_digest = fake_registry.add_blob("app", config)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_EMPTY, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER_TAR, "digest": digest, "size": len(layer)},
                {"mediaType": OCI_LAYER_TAR, "digest": digest, "size": len(layer) + 1},
            ],
        }
    )
    fake_registry.add_manifest("app", manifest, OCI_MANIFEST, "v1")
    fake_registry.clear_requests()

    with pytest.raises(errors.RegistryProtocolError) as caught:
        pull(store, f"{fake_registry.host}/app:v1")

    message = str(caught.value)
    assert f"lists blob {digest} with two sizes, 100000 and 100001 bytes" in message
    assert not store.has(digest)
    assert [r for r in fake_registry.requests if "/blobs/" in r.path] == []


def test_progress_callback_ends_with_finished_snapshot(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    big_image(fake_registry)
    snapshots: list[PullProgress] = []

    report = pull(
        store, f"{fake_registry.host}/app:v1", chunk_size=CHUNK, progress=snapshots.append
    )

    last = snapshots[-1]
    assert last.finished
    assert [s for s in snapshots if s.finished] == [last]
    assert last.fetched_bytes == report.bytes_fetched
    assert last.blobs_done == last.blobs_total == len(report.blobs)
    assert repr(last) == (
        f"PullProgress(fetched_bytes={last.fetched_bytes}, reused_bytes={last.reused_bytes}, "
        f"total_bytes={last.total_bytes}, blobs_done={last.blobs_done}, "
        f"blobs_total={last.blobs_total}, finished=True)"
    )

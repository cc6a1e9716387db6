"""The mirror as a pull-through cache of a real docker-registry, read by skopeo."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.mirror.conftest import Registry, make_image, push, tree_digests
from tests.mirror.helpers import copy_from_mirror, get, running
from tests.registry import faults
from tests.registry.fake import FakeRegistry
from warmstart import LayerStore, errors
from warmstart.mirror import Mirror, Upstream
from warmstart.mirror import app as mirror_app

CHUNK = 1 << 20


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def upstream_image(tmp_path: Path, registry: Registry, sizes: list[int], seed: int = 0) -> Path:
    layout = tmp_path / f"source-{seed}"
    make_image(layout, "v1", sizes, seed=seed)
    push(layout, "v1", registry, "team/app")
    return layout


def test_skopeo_pull_through_is_byte_identical(
    store: LayerStore, registry: Registry, tmp_path: Path
) -> None:
    source = upstream_image(tmp_path, registry, [3 * CHUNK + 12345, 70_000, 0])
    mirror = Mirror(store, upstreams=[Upstream(registry.host)], warm=False, chunk_size=CHUNK)
    cache = mirror.caches[registry.host]

    async def body() -> None:
        async with running(mirror) as server:
            await copy_from_mirror(server, "team/app:v1", f"oci:{tmp_path / 'first'}:v1")
            fetched = cache.upstream_blob_fetches
            await copy_from_mirror(server, "team/app:v1", f"oci:{tmp_path / 'second'}:v1")
            assert cache.upstream_blob_fetches == fetched

    asyncio.run(body())
    expected = tree_digests(source / "blobs")
    assert tree_digests(tmp_path / "first" / "blobs") == expected
    assert tree_digests(tmp_path / "second" / "blobs") == expected
    assert cache.upstream_blob_fetches == 4
    assert store.verify().ok


def test_cached_image_survives_upstream_outage(
    store: LayerStore, registry: Registry, tmp_path: Path
) -> None:
    source = upstream_image(tmp_path, registry, [200_000, 5000])
    clock = FakeClock()
    mirror = Mirror(store, upstreams=[Upstream(registry.host)], tag_ttl_s=30.0, clock=clock)

    async def body() -> None:
        async with running(mirror) as server:
            await copy_from_mirror(server, "team/app:v1", f"oci:{tmp_path / 'warm'}:v1")
            os.kill(registry.process.pid, signal.SIGKILL)
            registry.process.wait()
            clock.now += 60.0
            await copy_from_mirror(server, "team/app:v1", f"oci:{tmp_path / 'offline'}:v1")

    asyncio.run(body())
    assert tree_digests(tmp_path / "offline" / "blobs") == tree_digests(source / "blobs")


def test_tag_is_resolved_again_after_ttl(
    store: LayerStore, registry: Registry, tmp_path: Path
) -> None:
    first = make_image(tmp_path / "a", "v1", [100], seed=1)
    second = make_image(tmp_path / "b", "v1", [100], seed=2)
    push(tmp_path / "a", "v1", registry, "team/app")
    clock = FakeClock()
    mirror = Mirror(store, upstreams=[Upstream(registry.host)], tag_ttl_s=30.0, clock=clock)

    async def body() -> None:
        async with running(mirror) as server:
            _, headers, _ = await get(server, "/v2/team/app/manifests/v1", "HEAD")
            assert headers["Docker-Content-Digest"] == first
            push(tmp_path / "b", "v1", registry, "team/app")
            clock.now += 29.0
            _, headers, _ = await get(server, "/v2/team/app/manifests/v1", "HEAD")
            assert headers["Docker-Content-Digest"] == first
            clock.now += 2.0
            _, headers, _ = await get(server, "/v2/team/app/manifests/v1", "HEAD")
            assert headers["Docker-Content-Digest"] == second

    asyncio.run(body())


def test_concurrent_requests_fetch_blob_once(
    store: LayerStore, registry: Registry, tmp_path: Path
) -> None:
    source = upstream_image(tmp_path, registry, [2 * CHUNK])
    layer = max(
        (path for path in (source / "blobs" / "sha256").iterdir()), key=lambda p: p.stat().st_size
    )
    mirror = Mirror(store, upstreams=[Upstream(registry.host)], warm=False, chunk_size=CHUNK)
    cache = mirror.caches[registry.host]

    async def body() -> None:
        async with running(mirror) as server:
            path = f"/v2/team/app/blobs/sha256:{layer.name}"
            results = await asyncio.gather(*(get(server, path) for _ in range(6)))
            for status, _, content in results:
                assert status == 200
                assert content == layer.read_bytes()

    asyncio.run(body())
    assert cache.upstream_blob_fetches == 1


def test_tag_resolves_while_warm_up_holds_transfers(
    store: LayerStore, fake_registry: FakeRegistry
) -> None:
    # A slow upstream: every blob response stops after its headers until released. Warming
    # 40 layers then keeps more blob downloads running than the store's 32 transfer threads.
    fake_registry.add_image("team/big", "v1", [os.urandom(1000 + i) for i in range(40)])
    fake_registry.add_image("team/small", "v1", [os.urandom(1000)])
    pause = fake_registry.add_fault(faults.Pause(timeout_s=20))
    mirror = Mirror(store, upstreams=[Upstream(fake_registry.host, insecure=True)])
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}

    async def body() -> None:
        async with running(mirror) as server:
            try:
                status, _, _ = await get(server, "/v2/team/big/manifests/v1", headers=accept)
                assert status == 200
                assert await asyncio.to_thread(pause.paused.wait, 10)
                small = get(server, "/v2/team/small/manifests/v1", headers=accept)
                status, _, _ = await asyncio.wait_for(small, timeout=5)
                assert status == 200
            finally:
                pause.release.set()

    asyncio.run(body())


def test_warm_fetches_all_blobs_and_tags_store(
    store: LayerStore, registry: Registry, tmp_path: Path
) -> None:
    digest = make_image(tmp_path / "source", "v1", [300_000, 1000])
    push(tmp_path / "source", "v1", registry, "team/app")
    mirror = Mirror(store, upstreams=[Upstream(registry.host)])

    async def body() -> None:
        async with running(mirror) as server:
            status, _, _ = await get(server, "/v2/team/app/manifests/v1")
            assert status == 200
            await asyncio.gather(*mirror._tasks)

    asyncio.run(body())
    assert store.resolve(f"{registry.host}/team/app:v1").digest == digest
    assert store.verify().ok
    for path in (tmp_path / "source" / "blobs" / "sha256").iterdir():
        assert store.has(f"sha256:{path.name}"), path.name


def test_missing_upstream_tag_is_404(store: LayerStore, registry: Registry) -> None:
    mirror = Mirror(store, upstreams=[Upstream(registry.host)])

    async def body() -> None:
        async with running(mirror) as server:
            status, _, _ = await get(server, "/v2/team/app/manifests/nope")
            assert status == 404
            status, _, _ = await get(server, "/v2/team/app/blobs/sha256:" + "1" * 64)
            assert status == 404

    asyncio.run(body())


def test_unreachable_upstream_without_cache_is_502(store: LayerStore, registry: Registry) -> None:
    os.kill(registry.process.pid, signal.SIGKILL)
    registry.process.wait()
    mirror = Mirror(store, upstreams=[Upstream(registry.host)])

    async def body() -> None:
        async with running(mirror) as server:
            status, _, _ = await get(server, "/v2/team/app/manifests/v1")
            assert status == 502

    asyncio.run(body())


def test_unknown_namespace_serves_store_only(
    store: LayerStore, registry: Registry, tmp_path: Path
) -> None:
    upstream_image(tmp_path, registry, [100])
    mirror = Mirror(store, upstreams=[Upstream(registry.host)])

    async def body() -> None:
        async with running(mirror) as server:
            status, _, _ = await get(server, "/v2/team/app/manifests/v1?ns=example.com")
            assert status == 404
            status, _, _ = await get(server, f"/v2/team/app/manifests/v1?ns={registry.host}")
            assert status == 200

    asyncio.run(body())


def test_digest_of_served_tag_stays_available(
    store: LayerStore, registry: Registry, tmp_path: Path
) -> None:
    upstream_image(tmp_path, registry, [1000])
    mirror = Mirror(store, upstreams=[Upstream(registry.host)], warm=False)

    async def body() -> None:
        async with running(mirror) as server:
            status, headers, _ = await get(server, "/v2/team/app/manifests/v1", "HEAD")
            assert status == 200
            os.kill(registry.process.pid, signal.SIGKILL)
            registry.process.wait()
            digest = headers["Docker-Content-Digest"]
            status, headers, _ = await get(server, f"/v2/team/app/manifests/{digest}")
            assert status == 200
            assert headers["Docker-Content-Digest"] == digest

    asyncio.run(body())


def test_no_warm_tags_fetched_image(store: LayerStore, registry: Registry, tmp_path: Path) -> None:
    digest = make_image(tmp_path / "source", "v1", [300_000, 1000])
    push(tmp_path / "source", "v1", registry, "team/app")
    mirror = Mirror(store, upstreams=[Upstream(registry.host)], warm=False)
    store_tag = f"{registry.host}/team/app:v1"

    async def body() -> None:
        async with running(mirror) as server:
            status, _, _ = await get(server, "/v2/team/app/manifests/v1")
            assert status == 200
            await asyncio.gather(*mirror._tasks)
            # Without warming, reading the manifest fetches no blob and tags nothing yet.
            assert mirror.caches[registry.host].upstream_blob_fetches == 0
            with pytest.raises(errors.TagNotFoundError):
                store.resolve(store_tag)

            await copy_from_mirror(server, "team/app:v1", f"oci:{tmp_path / 'copy'}:v1")
            await asyncio.gather(*mirror._tasks)

    asyncio.run(body())
    assert store.resolve(store_tag).digest == digest
    assert store.verify().ok


def test_mirror_keeps_bounded_tag_map(
    store: LayerStore, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mirror_app, "MAX_TRACKED_MANIFESTS", 2)
    digests = []
    for seed in range(4):
        layout = tmp_path / f"source-{seed}"
        digests.append(make_image(layout, "v1", [1000], seed=seed))
        push(layout, "v1", registry, f"team/app{seed}")
    mirror = Mirror(store, upstreams=[Upstream(registry.host)])

    async def body() -> None:
        async with running(mirror) as server:
            for seed in range(4):
                status, _, _ = await get(server, f"/v2/team/app{seed}/manifests/v1")
                assert status == 200
                await asyncio.gather(*mirror._tasks)
                assert len(mirror._tag_of) <= 2

    asyncio.run(body())
    for seed, digest in enumerate(digests):
        assert store.resolve(f"{registry.host}/team/app{seed}:v1").digest == digest

"""A multi-platform image pulled one platform at a time through the mirror, then served offline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from tests.mirror.conftest import Registry, push, tree_digests
from tests.mirror.helpers import get, running, skopeo_async
from warmstart import LayerStore, errors
from warmstart.mirror import Mirror, RunningMirror, Upstream

REPOSITORY = "team/multi"


def read_json(layout: Path, digest: str) -> dict[str, object]:
    data = (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    document: dict[str, object] = json.loads(data)
    return document


def platform_digest(index: dict[str, object], architecture: str) -> str:
    entries = index["manifests"]
    assert isinstance(entries, list)
    for entry in entries:
        if entry.get("platform") == {"architecture": architecture, "os": "linux"}:
            return str(entry["digest"])
    raise AssertionError(f"the fixture index has no linux/{architecture} entry")


def image_blobs(manifest: dict[str, object]) -> list[str]:
    config = manifest["config"]
    layers = manifest["layers"]
    assert isinstance(config, dict)
    assert isinstance(layers, list)
    return [str(config["digest"]), *(str(layer["digest"]) for layer in layers)]


async def copy_platform(server: RunningMirror, architecture: str, destination: Path) -> None:
    """Copy one platform of the image, as a runtime on that platform pulls it."""
    await skopeo_async(
        "--override-os",
        "linux",
        "--override-arch",
        architecture,
        "copy",
        "--src-tls-verify=false",
        f"docker://127.0.0.1:{server.port}/{REPOSITORY}:v1",
        f"oci:{destination}:v1",
    )


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "no-warm"])
def test_index_tag_survives_gc_and_upstream_outage(
    store: LayerStore, registry: Registry, images: Path, tmp_path: Path, warm: bool
) -> None:
    # Tag v1 of the regclient layout is an index of linux/amd64, linux/arm64 and two
    # attestation manifests.
    layout = images / "regclient-testrepo" / "testrepo"
    push(layout, "v1", registry, REPOSITORY)
    index_file = json.loads((layout / "index.json").read_text())
    (index,) = [
        entry["digest"]
        for entry in index_file["manifests"]
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == "v1"
    ]
    amd64 = platform_digest(read_json(layout, index), "amd64")
    arm64 = platform_digest(read_json(layout, index), "arm64")
    amd64_blobs = image_blobs(read_json(layout, amd64))
    store_tag = f"{registry.host}/{REPOSITORY}:v1"
    mirror = Mirror(store, upstreams=[Upstream(registry.host)], warm=warm)

    async def pull_through() -> None:
        async with running(mirror) as server:
            await copy_platform(server, "amd64", tmp_path / "online")
            await asyncio.gather(*mirror._tasks)

    asyncio.run(pull_through())

    assert store.resolve(store_tag).digest == index
    assert store.resolve_platform(store_tag, "linux/amd64").digest == amd64
    assert not store.has(arm64)
    stray = store.put(b"a blob nothing refers to").digest
    removed = {blob.digest for blob in store.gc(grace_period_s=0).removed_blobs}
    assert removed == {stray}
    for digest in [index, amd64, *amd64_blobs]:
        assert store.has(digest), digest
    with pytest.raises(errors.PlatformNotInStoreError, match="linux/arm64"):
        store.resolve_platform(store_tag, "linux/arm64")

    os.kill(registry.process.pid, signal.SIGKILL)
    registry.process.wait()
    restarted = Mirror(LayerStore(store.root), upstreams=[Upstream(registry.host)])

    async def serve_offline() -> None:
        async with running(restarted) as server:
            status, headers, _ = await get(server, f"/v2/{REPOSITORY}/manifests/v1")
            assert status == 200
            assert headers["Docker-Content-Digest"] == index
            status, _, body = await get(server, f"/v2/{REPOSITORY}/manifests/{amd64}")
            assert status == 200
            assert body == store.read(amd64)
            for digest in amd64_blobs:
                status, _, body = await get(server, f"/v2/{REPOSITORY}/blobs/{digest}")
                assert status == 200, digest
                assert body == (layout / "blobs" / "sha256" / digest[7:]).read_bytes()
            status, _, _ = await get(server, f"/v2/{REPOSITORY}/manifests/{arm64}")
            assert status == 502
            await copy_platform(server, "amd64", tmp_path / "offline")

    asyncio.run(serve_offline())
    offline = tree_digests(tmp_path / "offline" / "blobs")
    assert offline == tree_digests(tmp_path / "online" / "blobs")
    source = tree_digests(layout / "blobs")
    for name, digest in offline.items():
        assert source[name] == digest, name


def test_index_tag_waits_for_incomplete_platform(
    store: LayerStore, registry: Registry, images: Path
) -> None:
    layout = images / "regclient-testrepo" / "testrepo"
    push(layout, "v1", registry, REPOSITORY)
    mirror = Mirror(store, upstreams=[Upstream(registry.host)])
    cache = mirror.caches[registry.host]

    async def body() -> None:
        async with running(mirror) as server:
            status, headers, content = await get(server, f"/v2/{REPOSITORY}/manifests/v1")
            assert status == 200
            await asyncio.gather(*mirror._tasks)
            index = headers["Docker-Content-Digest"]
            amd64 = platform_digest(json.loads(content), "amd64")
            # The platform manifest is in the store before its blobs, as while a client pulls it.
            await cache.fetch_manifest(REPOSITORY, amd64)
            store.untag(cache.store_tag(REPOSITORY, "v1"))

            assert not await cache.tag_index(REPOSITORY, index, "v1")
            with pytest.raises(errors.TagNotFoundError):
                store.resolve(cache.store_tag(REPOSITORY, "v1"))

            status, _, _ = await get(server, f"/v2/{REPOSITORY}/manifests/{amd64}")
            assert status == 200
            await asyncio.gather(*mirror._tasks)
            assert store.resolve(cache.store_tag(REPOSITORY, "v1")).digest == index

    asyncio.run(body())

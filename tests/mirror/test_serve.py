"""The mirror serving a store without an upstream: real fixtures, ranges, errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from tests.mirror.conftest import make_image, skopeo, tree_digests
from tests.mirror.helpers import copy_from_mirror, get, running, skopeo_async
from warmstart import LayerStore
from warmstart.mirror import Mirror


def test_skopeo_copies_real_fixture_byte_identical(
    store: LayerStore, images: Path, tmp_path: Path
) -> None:
    fixture = images / "regclient-testrepo" / "testrepo"
    store.import_layout(fixture, tags=["v1", "a1"])
    expected = tmp_path / "expected"
    skopeo("copy", "--all", f"oci:{fixture}:v1", f"oci:{expected}:v1")

    async def body() -> None:
        async with running(Mirror(store)) as server:
            await copy_from_mirror(server, "testrepo:v1", f"oci:{tmp_path / 'copied'}:v1")

    asyncio.run(body())
    copied = tree_digests(tmp_path / "copied" / "blobs")
    assert copied == tree_digests(expected / "blobs")
    assert len(copied) > 3


def test_manifest_headers_match_content(store: LayerStore, tmp_path: Path) -> None:
    digest = make_image(tmp_path / "layout", "v1", [1000])
    store.import_layout(tmp_path / "layout")

    async def body() -> None:
        async with running(Mirror(store)) as server:
            status, headers, content = await get(server, "/v2/app/manifests/v1")
            assert status == 200
            assert headers["Docker-Content-Digest"] == digest
            assert headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
            assert "sha256:" + hashlib.sha256(content).hexdigest() == digest
            status, headers, content = await get(server, f"/v2/app/manifests/{digest}", "HEAD")
            assert status == 200
            assert headers["Content-Length"] == str(store.stat(digest).size)
            assert content == b""

    asyncio.run(body())


def test_blob_range_returns_206_slice(store: LayerStore, tmp_path: Path) -> None:
    make_image(tmp_path / "layout", "v1", [200_000])
    store.import_layout(tmp_path / "layout")
    layer = max(store.list(), key=lambda blob: blob.size)
    whole = store.read(layer.digest)

    async def body() -> None:
        async with running(Mirror(store)) as server:
            path = f"/v2/app/blobs/{layer.digest}"
            status, headers, content = await get(server, path, headers={"Range": "bytes=10-99"})
            assert status == 206
            assert content == whole[10:100]
            assert headers["Content-Range"] == f"bytes 10-99/{len(whole)}"
            status, headers, content = await get(server, path)
            assert status == 200
            assert content == whole
            assert headers["Docker-Content-Digest"] == layer.digest

    asyncio.run(body())


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v2/app/blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
        ("GET", "/v2/app/manifests/missing", 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/app/manifests/sha256:" + "0" * 64, 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/app/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
        ("GET", "/v2/App/manifests/v1", 400, "NAME_INVALID"),
        ("PUT", "/v2/app/manifests/v1", 405, "UNSUPPORTED"),
        ("DELETE", "/v2/app/blobs/sha256:" + "0" * 64, 405, "UNSUPPORTED"),
    ],
    ids=[
        "blob-missing",
        "tag-missing",
        "manifest-digest-missing",
        "bad-digest",
        "bad-name",
        "push",
        "delete",
    ],
)
def test_errors_use_oci_envelope(
    store: LayerStore, method: str, path: str, status: int, code: str
) -> None:
    async def body() -> None:
        async with running(Mirror(store)) as server:
            actual_status, _, content = await get(server, path, method)
            assert actual_status == status
            assert json.loads(content)["errors"][0]["code"] == code

    asyncio.run(body())


def test_layer_digest_is_not_served_as_manifest(store: LayerStore, tmp_path: Path) -> None:
    make_image(tmp_path / "layout", "v1", [1000])
    store.import_layout(tmp_path / "layout")
    layer = max(store.list(), key=lambda blob: blob.size)

    async def body() -> None:
        async with running(Mirror(store)) as server:
            status, _, _ = await get(server, f"/v2/app/manifests/{layer.digest}")
            assert status == 404

    asyncio.run(body())


def test_version_check_and_tag_list(store: LayerStore, tmp_path: Path) -> None:
    make_image(tmp_path / "layout", "v1", [10])
    store.import_layout(tmp_path / "layout")
    store.tag("app:v2", store.resolve("v1").digest)

    async def body() -> None:
        async with running(Mirror(store)) as server:
            status, headers, _ = await get(server, "/v2/")
            assert status == 200
            assert headers["Docker-Distribution-API-Version"] == "registry/2.0"
            status, _, content = await get(server, "/v2/app/tags/list")
            assert status == 200
            assert json.loads(content) == {"name": "app", "tags": ["v2"]}

    asyncio.run(body())


def test_token_required_on_every_request(store: LayerStore, tmp_path: Path) -> None:
    make_image(tmp_path / "layout", "v1", [5000])
    store.import_layout(tmp_path / "layout")
    token = "s3cret-token"

    async def body() -> None:
        async with running(Mirror(store, token=token)) as server:
            for path in ("/v2/", "/v2/app/manifests/v1", "/v2/app/tags/list"):
                status, headers, _ = await get(server, path)
                assert status == 401, path
                assert headers["WWW-Authenticate"].startswith("Bearer ")
            status, _, _ = await get(
                server, "/v2/app/manifests/v1", headers={"Authorization": "Bearer wrong"}
            )
            assert status == 401
            status, _, _ = await get(
                server, "/v2/app/manifests/v1", headers={"Authorization": f"Bearer {token}"}
            )
            assert status == 200
            await skopeo_async(
                "copy",
                "--src-tls-verify=false",
                f"--src-registry-token={token}",
                f"docker://127.0.0.1:{server.port}/app:v1",
                f"oci:{tmp_path / 'copied'}:v1",
            )

    asyncio.run(body())
    assert tree_digests(tmp_path / "copied" / "blobs") == tree_digests(
        tmp_path / "layout" / "blobs"
    )


def test_empty_token_rejected(store: LayerStore) -> None:
    with pytest.raises(ValueError, match="token"):
        Mirror(store, token="")

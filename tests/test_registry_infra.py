"""The registry test infrastructure behaves like the OCI Distribution protocol it stands for.

Pushes to the real ``docker-registry`` are read back with plain HTTP. Every fault of the fake
registry fires as configured and is counted. The token flow works with urllib and curl, and the
throttling proxy caps each connection's rate.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from benchmarks.throttle_proxy import ThrottleProxy, TokenBucket
from hypothesis import given
from hypothesis import strategies as st

from tests.paths import SHARED_DATA
from tests.registry import faults
from tests.registry.bodies import Unsatisfiable, parse_range
from tests.registry.fake import BasicAuth, BearerAuth, FakeRegistry, basic_header
from tests.registry.layout import (
    IN_TOTO,
    OCI_INDEX,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    build_image,
    digest_of,
    tar_layer,
    write_layout,
)
from tests.registry.real import RegistryRepository, http_request
from tests.registry.server import ServerThread

REPO = "library/sample"


@pytest.fixture(scope="module")
def shared_images() -> Path:
    path = SHARED_DATA / "images"
    if not path.is_dir():
        message = f"real image fixtures not found at {path}; set WARMSTART_SHARED_DATA"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def sample_layer(size: int = 300_000) -> bytes:
    """A tar layer of non-repeating text, so gzip leaves it large enough to cut into ranges."""
    lines = b"".join(b"line %08d of a sample layer\n" % i for i in range(size // 30))
    return tar_layer({"usr/share/sample.txt": lines})


def open_response(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", timeout_s: float = 10
) -> http.client.HTTPResponse:
    """Send one request with http.client (no redirects followed) and return the open response.

    For tests that read a body which ends early; close it with ``read_all``.
    """
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.netloc, timeout=timeout_s)
    path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    # With "Connection: close" http.client hands the socket to the response, which closes it.
    connection.request(method, path, headers={"Connection": "close", **(headers or {})})
    return connection.getresponse()


def read_all(response: http.client.HTTPResponse) -> bytes:
    with response:
        return response.read()


@dataclass(frozen=True)
class Exchange:
    """A response read to its end: status, headers and body."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def getheader(self, name: str) -> str | None:
        return self.headers.get(name)


def fetch(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", timeout_s: float = 10
) -> Exchange:
    """Send one request (no redirects followed) and read the whole response."""
    response = open_response(url, headers, method, timeout_s)
    return Exchange(response.status, response.headers, read_all(response))


# Real registry.


def test_real_registry_blob_range_matches_bytes(registry_repo: RegistryRepository) -> None:
    image = registry_repo.push_generated("v1", [sample_layer()])
    layer = image.layers[0]
    data = image.blobs[layer.digest]

    whole = fetch(registry_repo.blob_url(layer.digest))
    assert whole.status == 200
    assert whole.getheader("Docker-Content-Digest") == layer.digest
    assert whole.body == data

    part = fetch(registry_repo.blob_url(layer.digest), {"Range": "bytes=1000-4999"})
    assert part.status == 206
    assert part.getheader("Content-Range") == f"bytes 1000-4999/{len(data)}"
    assert part.body == data[1000:5000]


def test_real_registry_manifest_digest_preserved(registry_repo: RegistryRepository) -> None:
    image = registry_repo.push_generated("v1", [sample_layer(), tar_layer({"a": b"a"})])
    response = http_request(
        "GET", registry_repo.manifest_url("v1"), headers={"Accept": OCI_MANIFEST}
    )
    assert response.status == 200
    assert response.headers["content-type"] == OCI_MANIFEST
    assert response.headers["docker-content-digest"] == image.digest
    assert digest_of(response.body) == image.digest


def test_real_registry_config_has_diff_ids(registry_repo: RegistryRepository) -> None:
    layers = [sample_layer(), tar_layer({"b": b"b"})]
    image = registry_repo.push_generated("v1", layers)
    assert image.config is not None
    config = json.loads(fetch(registry_repo.blob_url(image.config.digest)).body)
    assert config["rootfs"]["diff_ids"] == [digest_of(layer) for layer in layers]
    for descriptor, layer in zip(image.layers, layers, strict=True):
        assert gzip.decompress(fetch(registry_repo.blob_url(descriptor.digest)).body) == layer


def test_real_registry_push_shared_layout(
    registry_repo: RegistryRepository, shared_images: Path
) -> None:
    layout = shared_images / "regclient-testrepo" / "testrepo"
    digest = registry_repo.push_layout(layout, "v1", "v1")
    response = http_request("GET", registry_repo.manifest_url("v1"), headers={"Accept": OCI_INDEX})
    assert response.status == 200
    assert response.headers["docker-content-digest"] == digest
    index = json.loads(response.body)
    for entry in index["manifests"]:
        child = http_request(
            "HEAD",
            registry_repo.manifest_url(entry["digest"]),
            headers={"Accept": entry["mediaType"]},
        )
        assert child.status == 200, entry["digest"]


def test_real_registry_index_with_attestation(registry_repo: RegistryRepository) -> None:
    index = registry_repo.push_index("multi")
    response = http_request(
        "GET", registry_repo.manifest_url("multi"), headers={"Accept": OCI_INDEX}
    )
    assert response.headers["docker-content-digest"] == index.digest
    entries = json.loads(response.body)["manifests"]
    platforms = [(e["platform"]["os"], e["platform"]["architecture"]) for e in entries]
    unknown = ("unknown", "unknown")
    assert platforms == [("linux", "amd64"), ("linux", "arm64"), unknown, unknown]
    attestation = entries[2]
    assert attestation["annotations"]["vnd.docker.reference.digest"] == entries[0]["digest"]
    manifest = json.loads(
        http_request(
            "GET",
            registry_repo.manifest_url(attestation["digest"]),
            headers={"Accept": OCI_MANIFEST},
        ).body
    )
    assert manifest["layers"][0]["mediaType"] == IN_TOTO


def test_real_registry_same_layer_twice(registry_repo: RegistryRepository) -> None:
    layer = sample_layer()
    image = registry_repo.push_generated("twice", [layer, layer])
    assert image.layers[0].digest == image.layers[1].digest
    manifest = json.loads(
        http_request(
            "GET", registry_repo.manifest_url("twice"), headers={"Accept": OCI_MANIFEST}
        ).body
    )
    assert [entry["digest"] for entry in manifest["layers"]] == [image.layers[0].digest] * 2
    assert (
        fetch(registry_repo.blob_url(image.layers[0].digest)).body
        == image.blobs[image.layers[0].digest]
    )


def test_real_registry_zero_byte_layer(registry_repo: RegistryRepository) -> None:
    image = registry_repo.push_generated("empty", [b""], compress=False)
    layer = image.layers[0]
    assert layer.size == 0
    assert layer.media_type == OCI_LAYER_TAR
    head = fetch(registry_repo.blob_url(layer.digest), method="HEAD")
    assert head.status == 200
    assert head.getheader("Content-Length") == "0"
    assert fetch(registry_repo.blob_url(layer.digest)).body == b""
    # Any range of an empty blob is unsatisfiable; the fake returns the same status.
    assert fetch(registry_repo.blob_url(layer.digest), {"Range": "bytes=0-0"}).status == 416


def test_real_registry_416_declares_blob_length(registry_repo: RegistryRepository) -> None:
    image = registry_repo.push_generated("v1", [sample_layer()])
    layer = image.layers[0]
    response = open_response(
        registry_repo.blob_url(layer.digest), {"Range": f"bytes={layer.size}-"}
    )
    assert response.status == 416
    assert response.getheader("Content-Range") == f"bytes */{layer.size}"
    # distribution 2.8.2 keeps the blob's Content-Length on a 416 and sends a short text body,
    # so a client that reads a 416 body to its declared length gets an incomplete read.
    assert response.getheader("Content-Length") == str(layer.size)
    with pytest.raises(http.client.IncompleteRead) as caught:
        read_all(response)
    assert b"invalid range" in caught.value.partial


def test_real_registry_model_artifact(registry_repo: RegistryRepository) -> None:
    weights = hashlib.sha256(b"weights").digest() * 4096
    artifact = registry_repo.push_artifact("model", [("model.safetensors", weights)])
    manifest = json.loads(
        http_request(
            "GET", registry_repo.manifest_url("model"), headers={"Accept": OCI_MANIFEST}
        ).body
    )
    assert manifest["artifactType"] == "application/vnd.warmstart.model.v1"
    assert manifest["layers"][0]["mediaType"].endswith("weights.v1.safetensors")
    assert fetch(registry_repo.blob_url(artifact.layers[0].digest)).body == weights


def test_real_registry_sha512_blob_aliases_sha256(registry_repo: RegistryRepository) -> None:
    data = b"blob addressed by sha512"
    sha512 = digest_of(data, "sha512")
    uploaded = registry_repo.put_blob(data, sha512)
    # distribution 2.8.2 accepts the upload but stores the blob under its sha256 digest.
    assert uploaded.status == 201
    assert uploaded.headers["docker-content-digest"] == digest_of(data)
    response = fetch(registry_repo.blob_url(sha512))
    assert response.status == 200
    assert response.body == data


def test_real_registry_rejects_wrong_sha512(registry_repo: RegistryRepository) -> None:
    wrong = digest_of(b"other bytes", "sha512")
    response = registry_repo.put_blob(b"blob addressed by sha512", wrong)
    assert response.status == 400
    assert json.loads(response.body)["errors"][0]["code"] == "DIGEST_INVALID"


def test_real_and_fake_agree_on_errors(
    registry_repo: RegistryRepository, fake_registry: FakeRegistry
) -> None:
    image = build_image([sample_layer()])
    registry_repo.push("v1", image)
    fake_registry.add_content(registry_repo.name, "v1", image)
    missing = digest_of(b"missing")
    layer = image.layers[0].digest
    cases = [
        ("GET", f"blobs/{missing}", {}),
        ("GET", f"manifests/{missing}", {"Accept": OCI_MANIFEST}),
        ("GET", "manifests/no-such-tag", {"Accept": OCI_MANIFEST}),
        ("GET", f"blobs/{layer}", {"Range": "bytes=0-99"}),
        ("GET", f"blobs/{layer}", {"Range": f"bytes={image.layers[0].size}-"}),
        ("HEAD", f"blobs/{layer}", {}),
        ("HEAD", "manifests/v1", {"Accept": OCI_MANIFEST}),
    ]
    for method, suffix, headers in cases:
        answers = []
        for base in (registry_repo.url, fake_registry.url):
            response = open_response(f"{base}/v2/{registry_repo.name}/{suffix}", headers, method)
            # distribution's 416 declares the blob's length but sends a short text body.
            if response.status == 416:
                response.close()
                body = b""
            else:
                body = read_all(response)
            code = json.loads(body)["errors"][0]["code"] if response.status == 404 else None
            answers.append(
                (
                    response.status,
                    code,
                    response.getheader("Content-Range"),
                    response.getheader("Docker-Content-Digest"),
                    body if response.status in (200, 206) else None,
                )
            )
        assert answers[0] == answers[1], f"{method} {suffix}"


# Layout builders.


def test_write_layout_is_readable_by_skopeo(layout_dir: Path) -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed")
    image = build_image([sample_layer()], architecture="arm64")
    write_layout(layout_dir, {"v1": image})
    result = subprocess.run(
        [skopeo, "inspect", f"oci:{layout_dir}:v1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    inspected = json.loads(result.stdout)
    assert inspected["Digest"] == image.digest
    assert inspected["Architecture"] == "arm64"
    assert inspected["Layers"] == [image.layers[0].digest]


# Fake registry: protocol.


def test_fake_serves_shared_layout(fake_registry: FakeRegistry, shared_images: Path) -> None:
    layout = shared_images / "regclient-testrepo" / "testrepo"
    tags = fake_registry.add_layout(REPO, layout)
    response = fetch(f"{fake_registry.url}/v2/{REPO}/manifests/v1")
    body = response.body
    assert response.status == 200
    assert response.getheader("Content-Type") == OCI_INDEX
    assert response.getheader("Docker-Content-Digest") == tags["v1"] == digest_of(body)


def test_fake_missing_blob_envelope(fake_registry: FakeRegistry) -> None:
    fake_registry.add_blob(REPO, b"present")
    missing = digest_of(b"absent")
    response = fetch(f"{fake_registry.url}/v2/{REPO}/blobs/{missing}")
    assert response.status == 404
    error = json.loads(response.body)["errors"][0]
    assert error == {
        "code": "BLOB_UNKNOWN",
        "message": "blob unknown to registry",
        "detail": missing,
    }


@given(
    size=st.integers(min_value=0, max_value=1000),
    start=st.integers(min_value=0, max_value=1100),
    length=st.integers(min_value=1, max_value=1100),
)
def test_parse_range_matches_slicing(size: int, start: int, length: int) -> None:
    data = bytes(range(256)) * 4
    blob = data[:size]
    end = start + length - 1
    if start >= size:
        with pytest.raises(Unsatisfiable):
            parse_range(f"bytes={start}-{end}", size)
        return
    parsed = parse_range(f"bytes={start}-{end}", size)
    assert parsed is not None
    assert blob[parsed[0] : parsed[1] + 1] == blob[start : end + 1]


def test_parse_range_ignores_multi_range() -> None:
    assert parse_range("bytes=0-1,5-6", 100) is None


def test_fake_records_requests(fake_registry: FakeRegistry) -> None:
    digest = fake_registry.add_blob(REPO, b"x" * 100)
    fetch(f"{fake_registry.url}/v2/{REPO}/blobs/{digest}", {"Range": "bytes=0-9"})
    fetch(f"{fake_registry.url}/v2/{REPO}/blobs/{digest}", {"Range": "bytes=0-1,4-5"})
    fetch(f"{fake_registry.url}/v2/{REPO}/blobs/{digest}", method="HEAD")
    gets = fake_registry.blob_requests(digest)
    assert [request.range for request in gets] == ["bytes=0-9", "bytes=0-1,4-5"]
    assert [request.status for request in gets] == [206, 200]
    assert len(fake_registry.blob_requests(digest, method="HEAD")) == 1
    assert len(fake_registry.multi_range_requests()) == 1


# Fake registry: faults.


@pytest.fixture
def blob(fake_registry: FakeRegistry) -> tuple[str, bytes]:
    data = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB
    return fake_registry.add_blob(REPO, data), data


def blob_url(fake: FakeRegistry, digest: str) -> str:
    return f"{fake.url}/v2/{REPO}/blobs/{digest}"


def test_fault_ignore_range(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    fault = fake_registry.add_fault(faults.IgnoreRange(digest))
    fetch(blob_url(fake_registry, digest))
    assert fault.fired == 0, "a request without Range is not affected"
    response = fetch(blob_url(fake_registry, digest), {"Range": "bytes=0-0"})
    assert response.status == 200
    assert response.getheader("Content-Range") is None
    assert response.body == data
    assert fault.fired == 1


def test_fault_only_hits_its_digest(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, _ = blob
    other = fake_registry.add_blob(REPO, b"other blob")
    fault = fake_registry.add_fault(faults.IgnoreRange(digest))
    assert fetch(blob_url(fake_registry, other), {"Range": "bytes=0-0"}).status == 206
    assert fault.fired == 0


@pytest.mark.parametrize("honest", [True, False], ids=["honest-header", "lying-header"])
def test_fault_wrong_range_start(
    fake_registry: FakeRegistry, blob: tuple[str, bytes], honest: bool
) -> None:
    digest, data = blob
    fault = fake_registry.add_fault(faults.WrongRangeStart(shift=7, honest_header=honest))
    response = fetch(blob_url(fake_registry, digest), {"Range": "bytes=100-199"})
    assert response.status == 206
    stated = "bytes 107-206" if honest else "bytes 100-199"
    assert response.getheader("Content-Range") == f"{stated}/{len(data)}"
    assert response.body == data[107:207]
    assert fault.fired == 1


def test_fault_truncate_body(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    fault = fake_registry.add_fault(faults.TruncateBody(after_bytes=1000, times=1))
    response = open_response(blob_url(fake_registry, digest))
    assert response.getheader("Content-Length") == str(len(data))
    with pytest.raises(http.client.IncompleteRead) as caught:
        read_all(response)
    assert caught.value.partial == data[:1000]
    assert fetch(blob_url(fake_registry, digest)).body == data, "times=1: second GET is whole"
    assert fault.fired == 1


def test_fault_empty_body(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, _ = blob
    fault = fake_registry.add_fault(faults.EmptyBody(digest))
    response = open_response(blob_url(fake_registry, digest), {"Range": "bytes=0-99"})
    assert response.getheader("Content-Length") == "100"
    with pytest.raises(http.client.IncompleteRead) as caught:
        read_all(response)
    assert caught.value.partial == b""
    assert fault.fired == 1


def test_fault_content_length_short(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    fault = fake_registry.add_fault(faults.WrongContentLength(delta=-10))
    response = fetch(blob_url(fake_registry, digest))
    assert response.getheader("Content-Length") == str(len(data) - 10)
    assert response.body == data[:-10]
    assert fault.fired == 1


def test_fault_content_length_long(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    fake_registry.add_fault(faults.WrongContentLength(delta=10))
    response = open_response(blob_url(fake_registry, digest))
    assert response.getheader("Content-Length") == str(len(data) + 10)
    with pytest.raises(http.client.IncompleteRead) as caught:
        read_all(response)
    assert caught.value.partial == data


def test_fault_wrong_bytes(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    fault = fake_registry.add_fault(faults.WrongBytes(digest))
    body = fetch(blob_url(fake_registry, digest)).body
    assert len(body) == len(data)
    assert digest_of(body) != digest
    assert fault.fired == 1


def test_fault_stall(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    fault = fake_registry.add_fault(faults.Stall(seconds=0.5, after_bytes=4096, times=2))
    started = time.monotonic()
    assert fetch(blob_url(fake_registry, digest)).body == data
    assert time.monotonic() - started >= 0.5
    response = open_response(blob_url(fake_registry, digest), timeout_s=0.2)
    with pytest.raises(TimeoutError):
        read_all(response)
    assert fault.fired == 2


def test_fault_too_many_requests(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    fault = fake_registry.add_fault(faults.TooManyRequests(digest, times=2))
    for _ in range(2):
        response = fetch(blob_url(fake_registry, digest))
        assert response.status == 429
        assert response.getheader("Retry-After") == "1"
        assert json.loads(response.body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert fetch(blob_url(fake_registry, digest)).body == data
    assert fault.fired == 2


def test_fault_unavailable_twice(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, _ = blob
    fault = fake_registry.add_fault(faults.ServiceUnavailable())
    statuses = [fetch(blob_url(fake_registry, digest), method="HEAD").status for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert fault.fired == 2


def test_fault_manifest_error(fake_registry: FakeRegistry) -> None:
    image = fake_registry.add_image(REPO, "v1", [sample_layer()])
    fault = fake_registry.add_fault(faults.ManifestServerError(digest="v1"))
    assert fetch(f"{fake_registry.url}/v2/{REPO}/manifests/v1").status == 500
    by_digest = fetch(f"{fake_registry.url}/v2/{REPO}/manifests/{image.digest}")
    assert by_digest.status == 200, "the fault targets the tag only"
    assert fetch(blob_url(fake_registry, image.layers[0].digest)).status == 200
    assert fault.fired == 1


def test_fault_redirect_to_storage(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    fake_registry.auth = BearerAuth()
    token = get_token(fake_registry, REPO)
    fault = fake_registry.add_fault(faults.RedirectToStorage(digest))
    redirect = fetch(blob_url(fake_registry, digest), {"Authorization": f"Bearer {token}"})
    assert redirect.status == 307
    location = redirect.getheader("Location")
    assert location is not None
    assert location.startswith(fake_registry.storage_url)

    leaked = fetch(location, {"Authorization": f"Bearer {token}", "Range": "bytes=0-9"})
    assert leaked.status == 400
    assert fake_registry.rejected_storage_authorization == 1

    clean = fetch(location, {"Range": "bytes=0-9"})
    assert clean.status == 206
    assert clean.body == data[:10]
    assert fault.fired == 1
    storage = [r for r in fake_registry.requests if r.server == "storage"]
    assert [r.authorization for r in storage] == [True, False]


def test_redirect_followed_by_urllib_leaks_auth(
    fake_registry: FakeRegistry, blob: tuple[str, bytes]
) -> None:
    """urllib keeps Authorization across hosts, which is what a client must not do."""
    digest, _ = blob
    fake_registry.auth = BasicAuth("user", "secret")
    fake_registry.add_fault(faults.RedirectToStorage(digest))
    request = urllib.request.Request(
        blob_url(fake_registry, digest), headers={"Authorization": basic_header("user", "secret")}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    caught.value.close()
    assert caught.value.code == 400
    assert fake_registry.rejected_storage_authorization == 1


def test_fault_status_faults_on_storage_body(
    fake_registry: FakeRegistry, blob: tuple[str, bytes]
) -> None:
    digest, data = blob
    fake_registry.add_fault(faults.RedirectToStorage(digest))
    ignore = fake_registry.add_fault(faults.IgnoreRange(digest))
    redirect = fetch(blob_url(fake_registry, digest), {"Range": "bytes=0-9"})
    location = redirect.getheader("Location")
    assert location is not None
    response = fetch(location, {"Range": "bytes=0-9"})
    assert response.status == 200
    assert response.body == data
    assert ignore.fired == 1


# Fake registry: auth.


def parse_challenge(header: str) -> dict[str, str]:
    scheme, _, parameters = header.partition(" ")
    assert scheme == "Bearer"
    values = {}
    for part in parameters.split(","):
        key, _, value = part.partition("=")
        values[key.strip()] = value.strip().strip('"')
    return values


def get_token(fake: FakeRegistry, repo: str, credentials: tuple[str, str] | None = None) -> str:
    """Run the Docker token flow with urllib: 401 challenge, then GET the realm."""
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{fake.url}/v2/{repo}/manifests/v1", timeout=10)
    caught.value.close()
    assert caught.value.code == 401
    challenge = parse_challenge(caught.value.headers["WWW-Authenticate"])
    assert challenge["realm"] == f"{fake.url}/token"
    assert challenge["scope"] == f"repository:{repo}:pull"
    query = urllib.parse.urlencode({"service": challenge["service"], "scope": challenge["scope"]})
    headers = {"Authorization": basic_header(*credentials)} if credentials else {}
    request = urllib.request.Request(f"{challenge['realm']}?{query}", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        grant = json.loads(response.read())
    assert grant["expires_in"] > 0
    return str(grant["token"])


def test_token_flow_with_urllib(fake_registry: FakeRegistry) -> None:
    image = fake_registry.add_image(REPO, "v1", [sample_layer()])
    fake_registry.auth = BearerAuth(username="puller", password="s3cret")
    token = get_token(fake_registry, REPO, ("puller", "s3cret"))
    response = fetch(
        f"{fake_registry.url}/v2/{REPO}/manifests/v1", {"Authorization": f"Bearer {token}"}
    )
    assert response.status == 200
    assert digest_of(response.body) == image.digest
    assert all("s3cret" not in repr(r) and token not in repr(r) for r in fake_registry.requests)


def test_token_endpoint_rejects_bad_password(fake_registry: FakeRegistry) -> None:
    fake_registry.auth = BearerAuth(username="puller", password="s3cret")
    query = f"service=fake&scope=repository:{REPO}:pull"
    response = fetch(
        f"{fake_registry.url}/token?{query}", {"Authorization": basic_header("puller", "wrong")}
    )
    assert response.status == 401
    assert json.loads(response.body)["errors"][0]["code"] == "UNAUTHORIZED"


def test_token_scope_is_per_repository(fake_registry: FakeRegistry) -> None:
    fake_registry.add_image(REPO, "v1", [sample_layer()])
    fake_registry.add_image("other/repo", "v1", [sample_layer()])
    fake_registry.auth = BearerAuth()
    token = get_token(fake_registry, REPO)
    response = fetch(
        f"{fake_registry.url}/v2/other/repo/manifests/v1", {"Authorization": f"Bearer {token}"}
    )
    assert response.status == 401
    assert 'error="insufficient_scope"' in (response.getheader("WWW-Authenticate") or "")


def test_token_flow_with_curl(fake_registry: FakeRegistry) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    digest = fake_registry.add_blob(REPO, b"fetched with curl")
    fake_registry.auth = BearerAuth()
    scope = f"repository:{REPO}:pull"
    grant = subprocess.run(
        [curl, "-sf", f"{fake_registry.url}/token?service=fake&scope={scope}"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    token = json.loads(grant.stdout)["token"]
    body = subprocess.run(
        [curl, "-sf", "-H", f"Authorization: Bearer {token}", blob_url(fake_registry, digest)],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert body.stdout == b"fetched with curl"


def test_fault_expire_tokens(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, _ = blob
    fake_registry.auth = BearerAuth()
    fault = fake_registry.add_fault(faults.ExpireTokens(after_requests=2))
    token = get_token(fake_registry, REPO)
    headers = {"Authorization": f"Bearer {token}"}
    statuses = [fetch(blob_url(fake_registry, digest), headers, "HEAD").status for _ in range(3)]
    assert statuses == [200, 200, 401]
    refused = fetch(blob_url(fake_registry, digest), headers, "HEAD")
    challenge = parse_challenge(refused.getheader("WWW-Authenticate") or "")
    assert challenge["scope"] == f"repository:{REPO}:pull"
    fresh = get_token(fake_registry, REPO)
    fresh_headers = {"Authorization": f"Bearer {fresh}"}
    assert fetch(blob_url(fake_registry, digest), fresh_headers, "HEAD").status == 200
    assert fault.fired == 1


def test_basic_auth(fake_registry: FakeRegistry, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    fake_registry.auth = BasicAuth("user", "pass")
    anonymous = fetch(blob_url(fake_registry, digest))
    assert anonymous.status == 401
    assert anonymous.getheader("WWW-Authenticate") == 'Basic realm="fake"'
    signed = fetch(blob_url(fake_registry, digest), {"Authorization": basic_header("user", "pass")})
    assert signed.body == data
    assert [r.auth_scheme for r in fake_registry.requests] == [None, "Basic"]


# Throttling proxy.


def timed_get(url: str, results: list[tuple[int, float]]) -> None:
    started = time.monotonic()
    body = fetch(url, timeout_s=20).body
    results.append((len(body), time.monotonic() - started))


RATE = 4_000_000  # bytes per second; small enough to measure in about a second
SIZE = 4_000_000


@pytest.fixture
def big_blob(fake_registry: FakeRegistry) -> str:
    return fake_registry.add_blob(REPO, os.urandom(SIZE))


def test_proxy_caps_one_connection(fake_registry: FakeRegistry, big_blob: str) -> None:
    with ThrottleProxy("127.0.0.1", fake_registry.port, rate_bytes_per_s=RATE) as proxy:
        results: list[tuple[int, float]] = []
        timed_get(f"http://{proxy.host}/v2/{REPO}/blobs/{big_blob}", results)
    size, elapsed = results[0]
    assert size == SIZE
    floor = (SIZE - proxy.burst_bytes) / RATE
    assert elapsed >= floor
    assert elapsed < floor * 1.5


def test_proxy_limit_is_per_connection(fake_registry: FakeRegistry, big_blob: str) -> None:
    with ThrottleProxy("127.0.0.1", fake_registry.port, rate_bytes_per_s=RATE) as proxy:
        results: list[tuple[int, float]] = []
        url = f"http://{proxy.host}/v2/{REPO}/blobs/{big_blob}"
        threads = [threading.Thread(target=timed_get, args=(url, results)) for _ in range(2)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        wall = time.monotonic() - started
    floor = (SIZE - proxy.burst_bytes) / RATE
    assert [size for size, _ in results] == [SIZE, SIZE]
    assert all(floor <= elapsed < floor * 1.5 for _, elapsed in results), results
    assert wall < 1.5 * floor, "two connections together move twice the per-connection rate"


def test_proxy_delays_first_byte(fake_registry: FakeRegistry) -> None:
    with ThrottleProxy("127.0.0.1", fake_registry.port, first_byte_delay_s=0.3) as proxy:
        started = time.monotonic()
        assert fetch(f"http://{proxy.host}/v2/").status == 200
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.0


def test_token_bucket_paces_to_rate() -> None:
    bucket = TokenBucket(rate_bytes_per_s=1000, burst_bytes=100)
    assert bucket.reserve(100, now=0.0) == 0.0, "one burst goes out at once"
    assert bucket.reserve(100, now=0.0) == pytest.approx(0.1)
    assert bucket.reserve(100, now=10.0) == 0.0, "idle time refills the bucket"
    assert bucket.reserve(1000, now=10.0) == pytest.approx(1.0)


def test_server_thread_stop_closes_late_connections() -> None:
    # Connections that wait in the listen backlog when stop() is called are accepted by the
    # loop while the server shuts down. Each one must be closed, because otherwise its
    # transport warns "unclosed transport" when collected, in whatever test runs then.
    app = web.Application()
    server = ServerThread(app, "late-connections")
    server.start()
    # Hold the server's loop, so the connections and the stop request queue up behind it.
    server._loop.call_soon_threadsafe(time.sleep, 0.2)
    time.sleep(0.05)
    clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        server.stop()
    finally:
        for client in clients:
            client.close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()

    unclosed = [str(w.message) for w in caught if "unclosed" in str(w.message)]
    assert unclosed == []

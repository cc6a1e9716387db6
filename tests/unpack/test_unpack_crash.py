"""A crash mid-unpack leaves nothing that looks complete, and a re-run finishes the job."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from benchmarks.throttle_proxy import ThrottleProxy

from tests.pull.helpers import pull
from tests.registry.real import RegistryRepository
from tests.unpack.layers import Member, Model, put_image, scan, tar_bytes
from warmstart import LayerStore

UNPACK = """
import sys
from warmstart import LayerStore
LayerStore(sys.argv[1]).unpack("img", sys.argv[2], flatten=sys.argv[3] == "flatten")
"""


def many_files(prefix: str, count: int) -> bytes:
    return tar_bytes(
        Member(f"{prefix}/d{i // 500}/f{i}", data=os.urandom(512) * 8) for i in range(count)
    )


def wait_for_partial(target: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        layers = target / "layers"
        partials = [*target.glob(".partial-rootfs"), *layers.glob(".partial-*")]
        if partials and any(p.is_dir() and any(p.rglob("f*")) for p in partials):
            return
        assert process.poll() is None, "the unpack finished before it could be killed"
        time.sleep(0.005)
    pytest.fail("no partial directory appeared within 60 s")


@pytest.mark.parametrize("layout", ["flatten", "overlay"])
def test_sigkill_then_rerun_completes(store: LayerStore, tmp_path: Path, layout: str) -> None:
    put_image(store, "img", [many_files("one", 6000), many_files("two", 6000)])
    target = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", UNPACK, str(store.root), str(target), layout])
    wait_for_partial(target, process)
    process.send_signal(signal.SIGKILL)
    process.wait()

    assert not (target / "rootfs").exists()
    assert not (target / "lowerdir").exists()

    report = store.unpack("img", target, flatten=layout == "flatten")
    reference = store.unpack("img", tmp_path / "reference", flatten=layout == "flatten")
    if layout == "flatten":
        assert scan(report.result) == scan(reference.result)
    else:
        for layer, expected in zip(report.layers, reference.layers, strict=True):
            hex_digest = layer.diff_id.removeprefix("sha256:")
            assert scan(target / "layers" / hex_digest) == scan(
                tmp_path / "reference" / "layers" / hex_digest
            ), expected.digest
    assert not list(target.glob(".partial-*"))
    assert not list((target / "layers").glob(".partial-*"))


PULL_UNPACK = """
import asyncio
import sys
from warmstart import LayerStore
store, reference, target, insecure = sys.argv[1:]
pulled = LayerStore(store).pull_and_unpack(reference, target, insecure_registries=[insecure])
asyncio.run(pulled)
"""
MIB = 1 << 20
# Per connection through the proxy. The slow layer (3 MiB) then takes about 30 s to download,
# twice the wait for the first layer to be published.
THROTTLE_BYTES_PER_S = 100_000
PUBLISH_WAIT_S = 15.0


def wait_for_published(layer: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + PUBLISH_WAIT_S
    while not layer.is_dir():
        assert process.poll() is None, "the pull ended before it could be killed"
        if time.monotonic() > deadline:
            pytest.fail(f"no layer was published within {PUBLISH_WAIT_S} s of the pull's start")
        time.sleep(0.01)


def test_sigkill_pull_keeps_published_layers(
    store: LayerStore, registry_repo: RegistryRepository, tmp_path: Path
) -> None:
    fast = tar_bytes(
        [Member("fast", tarfile.DIRTYPE, mode=0o755), Member("fast/data", data=os.urandom(6 * MIB))]
    )
    slow = tar_bytes([Member("slow/data", data=os.urandom(3 * MIB))])
    registry_repo.push_generated("base", [fast], compress=False)
    registry_repo.push_generated("app", [fast, slow], compress=False)
    direct = f"{registry_repo.reference_prefix}:app"
    # The larger layer is in the store before the pull, so it extracts first, from the
    # committed blob, while the other layer downloads slowly through the proxy.
    pull(store, f"{registry_repo.reference_prefix}:base")
    target = tmp_path / "out"
    fast_layer = target / "layers" / digest_hex(fast)
    slow_layer = target / "layers" / digest_hex(slow)

    with ThrottleProxy(
        "127.0.0.1", registry_repo.registry.port, rate_bytes_per_s=THROTTLE_BYTES_PER_S
    ) as proxy:
        throttled = f"{proxy.host}/{registry_repo.name}:app"
        process = subprocess.Popen(
            [sys.executable, "-c", PULL_UNPACK, str(store.root), throttled, str(target), proxy.host]
        )
        try:
            wait_for_published(fast_layer, process)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()

    assert not slow_layer.exists()
    assert not (target / "lowerdir").exists()
    assert scan(fast_layer) == model_entries(fast)
    before = fast_layer.stat()

    async def rerun() -> list[bool]:
        _, unpacked = await store.pull_and_unpack(direct, target)
        return [layer.reused for layer in unpacked.layers]

    assert asyncio.run(rerun()) == [True, False]
    after = fast_layer.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    reference = tmp_path / "reference"
    store.unpack(direct, reference)
    for layer in (fast, slow):
        name = digest_hex(layer)
        assert scan(target / "layers" / name) == scan(reference / "layers" / name)
    assert (target / "lowerdir").read_text() == (reference / "lowerdir").read_text().replace(
        str(reference.resolve()), str(target.resolve())
    )
    assert not list(target.glob(".partial-*"))
    assert not list((target / "layers").glob(".partial-*"))


def digest_hex(layer: bytes) -> str:
    return hashlib.sha256(layer).hexdigest()


def model_entries(layer: bytes) -> dict[str, tuple[object, ...]]:
    model = Model()
    model.apply(layer)
    return model.entries

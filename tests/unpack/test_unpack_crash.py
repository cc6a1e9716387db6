"""A crash mid-unpack leaves nothing that looks complete, and a re-run finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unpack.layers import Member, put_image, scan, tar_bytes
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

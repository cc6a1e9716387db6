"""Unpack as a user without root: device nodes are rejected, lost owners reported once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.unpack.layers import Member, put_image, tar_bytes
from warmstart import LayerStore

NOBODY = 65534
UNPACK = """
import json, sys
from warmstart import LayerStore, errors
try:
    report = LayerStore(sys.argv[1]).unpack("img", sys.argv[2], flatten=sys.argv[3] == "flatten")
    print(json.dumps({"warnings": report.warnings}))
except errors.UnsafeEntryError as error:
    print(json.dumps({"entry": error.entry, "reason": error.reason}))
"""


@pytest.fixture
def shared_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory the unprivileged user may read and write."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a process as another user")
    directory = Path(tmp_path_factory.mktemp("unprivileged"))
    for path in [directory, *directory.parents]:
        if path == Path("/"):
            break
        path.chmod(path.stat().st_mode | 0o005)
    target = directory / "targets"
    target.mkdir()
    os.chown(target, NOBODY, NOBODY)
    return directory


def run_as_nobody(store: Path, target: Path, layout: str) -> dict[str, object]:
    completed = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-c",
            UNPACK,
            str(store),
            str(target),
            layout,
        ],
        capture_output=True,
        check=True,
        text=True,
    )
    result: dict[str, object] = json.loads(completed.stdout)
    return result


@pytest.mark.parametrize("layout", ["flatten", "overlay"])
def test_device_node_rejected_without_root(shared_directory: Path, layout: str) -> None:
    store = LayerStore(shared_directory / "store")
    layer = tar_bytes([Member("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)])
    put_image(store, "img", [layer])
    result = run_as_nobody(store.root, shared_directory / "targets" / layout, layout)
    assert result["entry"] == "dev/null"
    assert "device nodes need root" in str(result["reason"])


def test_lost_owners_reported_once(shared_directory: Path) -> None:
    store = LayerStore(shared_directory / "store")
    members = [Member(f"f{i}", data=b"x", uid=1000) for i in range(50)]
    members.append(Member("d", tarfile.DIRTYPE, mode=0o555, uid=1000))
    members.append(Member("d/.wh..wh..opq"))
    put_image(store, "img", [tar_bytes(members)])
    flat = run_as_nobody(store.root, shared_directory / "targets" / "flat", "flatten")
    warnings = flat["warnings"]
    assert isinstance(warnings, list)
    assert len(warnings) == 1
    assert "owners not kept" in warnings[0]
    assert "(51 entries)" in warnings[0]
    overlay = run_as_nobody(store.root, shared_directory / "targets" / "layers", "overlay")
    assert any("user.overlay.opaque" in warning for warning in overlay["warnings"])  # type: ignore[union-attr]

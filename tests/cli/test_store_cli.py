"""`warmstart store` as a user runs it: exit codes, tables, JSON and error lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from warmstart import LayerStore
from warmstart.cli import main
from warmstart.cli.output import format_bytes


def run(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real console script in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "warmstart", *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_import_ls_verify_gc_du_json(tmp_path: Path, images: Path) -> None:
    store = str(tmp_path / "store")
    source = str(images / "regclient-testrepo" / "testrepo")
    imported = run("store", "import", source, "--store", store, "--tag", "v1", "--json")
    assert imported.returncode == 0, imported.stderr
    report = json.loads(imported.stdout)
    assert [image["tag"] for image in report["images"]] == ["v1"]
    assert report["blobs_added"] > 0

    listed = json.loads(run("store", "ls", "--store", store, "--json").stdout)
    assert [tag["tag"] for tag in listed["tags"]] == ["v1"]
    blobs = json.loads(run("store", "ls", "--blobs", "--store", store, "--json").stdout)
    assert len(blobs["blobs"]) == report["blobs_added"]

    verified = run("store", "verify", "--store", store, "--json")
    assert verified.returncode == 0
    assert json.loads(verified.stdout)["ok"] is True

    collected = json.loads(
        run("store", "gc", "--store", store, "--grace-period", "0", "--json").stdout
    )
    assert collected["removed_blobs"] == []
    usage = json.loads(run("store", "du", "--store", store, "--json").stdout)
    assert usage["blobs"] == report["blobs_added"]


def test_human_output_is_a_table(tmp_path: Path, images: Path) -> None:
    store = str(tmp_path / "store")
    run(
        "store",
        "import",
        str(images / "ggcr-testdata" / "hello-world-v25.tar"),
        "--store",
        store,
        "--tag",
        "hello",
    )
    listed = run("store", "ls", "--store", store)
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["TAG", "MEDIA", "TYPE", "DIGEST", "IMAGE", "SIZE"]
    assert lines[1].startswith("hello ")


def _blob_sizes(store: LayerStore, digest: str) -> dict[str, int]:
    """Map every config and layer digest under the manifest ``digest`` to its size."""
    document = json.loads(store.read(digest))
    sizes = {}
    for child in document.get("manifests", []):
        if store.has(child["digest"]):
            sizes.update(_blob_sizes(store, child["digest"]))
    for blob in [document.get("config"), *document.get("layers", [])]:
        if blob is not None:
            sizes[blob["digest"]] = blob["size"]
    return sizes


@pytest.mark.parametrize(
    ("source", "tag"),
    [
        pytest.param(Path("ggcr-testdata") / "hello-world-v25.tar", "hello", id="manifest"),
        pytest.param(Path("regclient-testrepo") / "testrepo", "v1", id="index"),
    ],
)
def test_ls_size_is_image_size(tmp_path: Path, images: Path, source: Path, tag: str) -> None:
    store_path = tmp_path / "store"
    imported = run(
        "store", "import", str(images / source), "--store", str(store_path), "--tag", tag
    )
    assert imported.returncode == 0, imported.stderr
    store = LayerStore(store_path)
    manifest = store.resolve(tag)
    expected = sum(_blob_sizes(store, manifest.digest).values())
    assert expected != manifest.size

    listed = json.loads(run("store", "ls", "--store", str(store_path), "--json").stdout)
    assert listed["tags"][0]["image_size"] == expected
    assert listed["tags"][0]["size"] == manifest.size
    table = run("store", "ls", "--store", str(store_path)).stdout.splitlines()
    assert table[1].endswith(format_bytes(expected))


def test_verify_exits_nonzero_on_corruption(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "store")
    info = store.put(b"content")
    path = store.path(info.digest)
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    result = run("store", "verify", "--store", str(store.root))
    assert result.returncode == 1
    assert f"digest_mismatch: {info.digest}" in result.stdout
    assert "1 problem" in result.stdout
    assert "1 problems" not in result.stdout


def test_errors_are_one_line_with_exit_1(tmp_path: Path, images: Path) -> None:
    result = run(
        "store",
        "import",
        str(images / "ggcr-testdata" / "sparse_foreign.tar"),
        "--store",
        str(tmp_path / "store"),
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("warmstart: error: foreign layer sha256:015b6ec6")


def test_missing_source_is_reported(tmp_path: Path) -> None:
    result = run("store", "import", str(tmp_path / "absent"), "--store", str(tmp_path / "s"))
    assert result.returncode == 2
    assert "warmstart store import: error: argument source: " in result.stderr
    assert "absent does not exist; name an OCI layout directory" in result.stderr


def test_store_defaults_to_environment_variable(tmp_path: Path) -> None:
    LayerStore(tmp_path / "env-store")
    result = run("store", "du", "--json", env={"WARMSTART_STORE": str(tmp_path / "env-store")})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["store"] == str(tmp_path / "env-store")


def test_read_only_actions_reject_missing_store(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    for action in (["ls"], ["du"], ["verify"], ["gc"]):
        result = run("store", *action, "--store", str(missing))
        assert result.returncode == 1, action
        assert f"no layer store at {missing}" in result.stderr
    assert not missing.exists(), "a read-only action created the store"


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["store", "no-such-action"])
    assert caught.value.code == 2


def test_export_writes_layout(tmp_path: Path, images: Path) -> None:
    store = str(tmp_path / "store")
    run("store", "import", str(images / "regclient-testrepo" / "testrepo"), "--store", store)
    result = run("store", "export", "v2", "--to", str(tmp_path / "out"), "--store", store)
    assert result.returncode == 0, result.stderr
    assert "exported v2" in result.stdout
    assert (tmp_path / "out" / "oci-layout").is_file()

"""``warmstart unpack`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unpack.layers import Member, put_image, tar_bytes
from warmstart import LayerStore
from warmstart.cli import main


def test_cli_unpack_json(
    store: LayerStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_image(store, "img", [tar_bytes([Member("hello", data=b"world")])])
    target = tmp_path / "out"
    status = main(["unpack", "img", "--to", str(target), "--store", str(store.root), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert status == 0
    assert document["layout"] == "overlay"
    assert document["layers"][0]["entries"] == 1
    assert Path(document["result"]) == (target / "lowerdir").resolve()


def test_cli_unpack_flatten_text(
    store: LayerStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_image(store, "img", [tar_bytes([Member("hello", data=b"world")])])
    target = tmp_path / "out"
    status = main(["unpack", "img", "--to", str(target), "--store", str(store.root), "--flatten"])
    assert status == 0
    assert "1 of 1 layers extracted" in capsys.readouterr().out
    assert (target / "rootfs" / "hello").read_bytes() == b"world"


def test_cli_unpack_rejection_exits_1(
    store: LayerStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_image(store, "img", [tar_bytes([Member("/etc/evil")])])
    status = main(["unpack", "img", "--to", str(tmp_path / "o"), "--store", str(store.root)])
    error = capsys.readouterr().err
    assert status == 1
    assert 'rejected entry "/etc/evil"' in error


def test_cli_unpack_missing_image_suggests_pull(
    store: LayerStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out"
    status = main(["unpack", "nosuch:v1", "--to", str(target), "--store", str(store.root)])
    error = capsys.readouterr().err
    assert status == 1
    assert f"image 'nosuch:v1' is not in the store at {store.root}" in error
    assert f"`warmstart pull nosuch:v1 --store {store.root}`" in error
    assert f"--unpack {target}`" in error
    assert not target.exists()


def test_cli_unpack_missing_image_default_store(
    store: LayerStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WARMSTART_STORE", str(store.root))
    status = main(["unpack", "nosuch:v1", "--to", str(tmp_path / "out"), "--flatten"])
    error = capsys.readouterr().err
    assert status == 1
    assert "`warmstart pull nosuch:v1`" in error
    assert "--store" not in error
    assert f"--unpack {tmp_path / 'out'} --flatten`" in error


def test_cli_unpack_to_file_hints(
    store: LayerStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_image(store, "img", [tar_bytes([Member("hello", data=b"world")])])
    target = tmp_path / "a-file"
    target.write_bytes(b"not a directory")
    status = main(["unpack", "img", "--to", str(target), "--store", str(store.root)])
    error = capsys.readouterr().err
    assert status == 1
    assert str(target) in error
    assert "the path must be a directory or not exist" in error
    assert "os error" not in error
    assert target.read_bytes() == b"not a directory"


def test_cli_pull_flatten_needs_unpack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_root = tmp_path / "store"
    status = main(["pull", "localhost:1/app:v1", "--flatten", "--store", str(store_root)])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("warmstart pull: error: --flatten applies only with --unpack DIR")
    assert not store_root.exists()

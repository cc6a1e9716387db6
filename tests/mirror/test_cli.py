"""``warmstart mirror`` and ``warmstart prefetch`` on the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.mirror.conftest import Registry, free_port, make_image, push, stop
from warmstart.cli import main
from warmstart.mirror import Upstream


@pytest.mark.parametrize(
    ("text", "registry", "insecure"),
    [
        ("http://127.0.0.1:5000", "127.0.0.1:5000", True),
        ("https://registry-1.docker.io", "docker.io", False),
        ("ghcr.io", "ghcr.io", False),
        ("https://quay.io/", "quay.io", False),
    ],
    ids=["http", "docker-hub", "bare-host", "trailing-slash"],
)
def test_upstream_parse(text: str, registry: str, insecure: bool) -> None:
    upstream = Upstream.parse(text)
    assert upstream.registry == registry
    assert upstream.insecure == insecure


@pytest.mark.parametrize("text", ["ftp://host", "https://host/path", "https://"])
def test_upstream_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid upstream"):
        Upstream.parse(text)


def test_prefetch_to_directory(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = make_image(tmp_path / "source", "v1", [10_000])
    push(tmp_path / "source", "v1", registry, "team/app")
    store = tmp_path / "store"

    status = main(["prefetch", f"{registry.host}/team/app:v1", "--to", str(store), "--json"])

    assert status == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"][0]["manifest_digest"] == digest


def test_mirror_command_serves_and_prefetch_warms_it(registry: Registry, tmp_path: Path) -> None:
    make_image(tmp_path / "source", "v1", [10_000])
    push(tmp_path / "source", "v1", registry, "team/app")
    token_file = tmp_path / "token"
    token_file.write_text("cli-token\n")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "warmstart",
        "mirror",
        "--store",
        str(tmp_path / "store"),
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"http://{registry.host}",
        "--token-file",
        str(token_file),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v2/", headers={"Authorization": "Bearer cli-token"}
            )
            try:
                with urllib.request.urlopen(request, timeout=1) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        status = main(
            [
                "prefetch",
                f"{registry.host}/team/app:v1",
                "--to",
                f"http://127.0.0.1:{port}",
                "--token-file",
                str(token_file),
            ]
        )
        assert status == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        finally:
            stop(process)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
    assert process.returncode == 0

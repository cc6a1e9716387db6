"""containerd (ctr) pulling through the mirror via a hosts.toml mirror entry."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.mirror.conftest import Registry, make_image, push, stop
from tests.mirror.helpers import running
from warmstart import LayerStore
from warmstart.mirror import Mirror, Upstream

CONTAINERD_START_TIMEOUT_S = 20.0
CTR_TIMEOUT_S = 120.0


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Path]:
    """A containerd of its own (root, state, socket under tmp_path); yields the socket path."""
    program = require_tool("containerd")
    base = tmp_path / "ctrd"
    base.mkdir()
    socket = base / "c.sock"
    config = base / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{base / "root"}"\n'
        f'state = "{base / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
        f'[ttrpc]\n  address = "{socket}.ttrpc"\n'
    )
    log = (base / "log.txt").open("wb")
    process = subprocess.Popen([program, "--config", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + CONTAINERD_START_TIMEOUT_S
        while not socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {(base / 'log.txt').read_text()}")
            time.sleep(0.05)
        yield socket
    finally:
        stop(process)
        log.close()


async def ctr(socket: Path, *arguments: str) -> bytes:
    process = await asyncio.create_subprocess_exec(
        require_tool("ctr"),
        "--address",
        str(socket),
        "--namespace",
        "mirror-test",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CTR_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise AssertionError(f"ctr {' '.join(arguments)} failed: {stderr.decode()}")
    return stdout


def test_ctr_pulls_and_unpacks_through_mirror(
    store: LayerStore, registry: Registry, containerd: Path, tmp_path: Path
) -> None:
    make_image(tmp_path / "source", "v1", [3 << 20, 4096])
    push(tmp_path / "source", "v1", registry, "team/app")
    mirror = Mirror(store, upstreams=[Upstream(registry.host)], chunk_size=1 << 20)
    blobs = sorted((tmp_path / "source" / "blobs" / "sha256").iterdir())

    async def body() -> None:
        async with running(mirror) as server:
            hosts = tmp_path / "hosts" / registry.host
            hosts.mkdir(parents=True)
            (hosts / "hosts.toml").write_text(
                f'server = "http://{registry.host}"\n'
                f'[host."http://127.0.0.1:{server.port}"]\n'
                '  capabilities = ["pull", "resolve"]\n'
            )
            # The upstream goes away after the mirror has the image, so only the mirror can serve.
            status = await mirror_prefetch(server.url, f"{registry.host}/team/app:v1")
            assert status == 200
            os.kill(registry.process.pid, signal.SIGKILL)
            registry.process.wait()
            await ctr(
                containerd,
                "image",
                "pull",
                "--snapshotter",
                "native",
                "--hosts-dir",
                str(tmp_path / "hosts"),
                f"{registry.host}/team/app:v1",
            )
            for blob in blobs:
                content = await ctr(containerd, "content", "get", f"sha256:{blob.name}")
                assert hashlib.sha256(content).hexdigest() == blob.name
                assert content == blob.read_bytes()

    asyncio.run(body())


async def mirror_prefetch(url: str, reference: str) -> int:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/_warmstart/prefetch", json={"references": [reference]}) as response,
    ):
        await response.read()
        return response.status

"""Run a mirror on a free local port for the length of one async test body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from warmstart.mirror import Mirror, RunningMirror, serve

SKOPEO_TIMEOUT_S = 120.0


@asynccontextmanager
async def running(mirror: Mirror) -> AsyncIterator[RunningMirror]:
    server = await serve(mirror, "127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


async def skopeo_async(*arguments: str) -> str:
    """Run skopeo without blocking the event loop that serves the mirror; returns stdout."""
    process = await asyncio.create_subprocess_exec(
        "skopeo",
        "--insecure-policy",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), SKOPEO_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(arguments)} failed: {stderr.decode()}")
    return stdout.decode()


async def copy_from_mirror(server: RunningMirror, source: str, destination: str) -> None:
    await skopeo_async(
        "copy",
        "--all",
        "--src-tls-verify=false",
        f"docker://127.0.0.1:{server.port}/{source}",
        destination,
    )


async def get(
    server: RunningMirror, path: str, method: str = "GET", **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.url + path, **kwargs) as response,
    ):
        return response.status, dict(response.headers), await response.read()

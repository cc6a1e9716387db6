"""Run a ``Mirror`` on a TCP address."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from aiohttp import web

from warmstart.mirror.app import Mirror

__all__ = ["RunningMirror", "listen_failed", "serve"]

logger = logging.getLogger("warmstart.mirror")


@dataclass
class RunningMirror:
    """A mirror listening on ``host:port``; ``await stop()`` closes it and its fetches."""

    mirror: Mirror
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()
        logger.info("mirror on %s stopped", self.url)


def listen_failed(error: OSError, host: str, port: int) -> OSError:
    """Return ``error`` of binding ``host:port`` reworded to name the address and the fix."""
    reason = os.strerror(error.errno).lower() if error.errno else str(error)
    return OSError(
        f"cannot listen on {host}:{port}: {reason}; choose another --listen address or stop "
        "the process that uses this one"
    )


async def serve(mirror: Mirror, host: str = "127.0.0.1", port: int = 5000) -> RunningMirror:
    """Start serving ``mirror`` on ``host:port`` (port 0 picks a free one) and return at once."""
    runner = web.AppRunner(mirror.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise listen_failed(error, host, port) from None
    bound_port = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound_port = address[1]
            break
    running = RunningMirror(mirror, runner, host, bound_port)
    logger.info("mirror serving %s on %s", mirror.store.root, running.url)
    return running

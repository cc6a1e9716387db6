"""Run an aiohttp application in a background thread with its own event loop.

Synchronous tests and out-of-process clients (the Rust puller) can then talk to it while the
test's thread blocks. The socket is bound before the thread starts, so the port is known at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from types import TracebackType

from aiohttp import web

from tests.registry.network import bind_loopback

logger = logging.getLogger("tests.registry.server")

START_TIMEOUT_S = 10.0
# Requests still running at stop (a stalled body, say) are cancelled after this long.
SHUTDOWN_TIMEOUT_S = 1.0


class ServerThread:
    """An aiohttp ``web.Application`` served on 127.0.0.1 from a daemon thread.

    ``port`` and ``url`` are valid from construction. ``start()`` returns once the server
    accepts connections; ``stop()`` closes it and joins the thread, and is safe to call twice.
    """

    def __init__(self, app: web.Application, name: str) -> None:
        self.app = app
        self.name = name
        self._socket = bind_loopback()
        self.port: int = self._socket.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-{self.port}", daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def start(self) -> None:
        """Start serving; raises ``RuntimeError`` if the server cannot start within 10 s."""
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT_S} s")
        if self._start_error is not None:
            raise RuntimeError(f"{self.name} failed to start") from self._start_error
        logger.info("%s listening on %s", self.name, self.url)

    def stop(self) -> None:
        """Stop serving, cancel requests still running after 1 s and join the thread."""
        if not self._thread.is_alive():
            self._socket.close()
            return
        future = asyncio.run_coroutine_threadsafe(self._cleanup(), self._loop)
        future.result(timeout=START_TIMEOUT_S + SHUTDOWN_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=START_TIMEOUT_S)
        logger.info("%s on %s stopped", self.name, self.url)

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as error:
            self._start_error = error
            self._started.set()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket).start()

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._socket.close()
        # A fault handler that closes its transport with bytes still buffered leaves the socket
        # open until the buffer drains, which never happens once the loop stops, and the
        # transport warns when collected. Abort every transport the loop still tracks
        # (`_transports` is the selector loop's own map), then let their callbacks run.
        tracked = getattr(self._loop, "_transports", {})
        for transport in list(tracked.values()):
            if transport is not None:
                transport.abort()
        await asyncio.sleep(0)

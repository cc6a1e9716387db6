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
# Aborting a transport can run protocol callbacks that open or close others, so the sweep
# repeats; each round takes one loop iteration.
ABORT_ROUNDS = 10


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
        # Stop accepting, then let the accept tasks already queued build their transports
        # while the server is open. In CPython 3.11 a transport built after Server.close()
        # fails in Server._attach once it owns the socket but before the loop tracks it, so
        # nothing closes it and it warns "unclosed transport" when collected.
        self._loop.remove_reader(self._socket.fileno())
        await asyncio.sleep(0)
        if self._runner is not None:
            await self._runner.cleanup()
        self._socket.close()
        await self._abort_transports()

    async def _abort_transports(self) -> None:
        """Abort every transport the loop still tracks and wait until each has closed its
        socket, in the order of their file descriptors.

        A fault handler that closes its transport with bytes still buffered leaves the socket
        open until the buffer drains, which never happens once the loop stops, and the
        transport warns when collected. ``_transports`` is the selector loop's own map.
        """
        tracked = getattr(self._loop, "_transports", {})
        for _ in range(ABORT_ROUNDS):
            still_open = [
                tracked[fd]
                for fd in sorted(tracked.keys())
                if tracked.get(fd) is not None and _socket_open(tracked[fd])
            ]
            if not still_open:
                return
            for transport in still_open:
                transport.abort()
            # An abort closes the socket in a callback on the next loop iteration.
            await asyncio.sleep(0)
        logger.warning("%s: transports still open after %d abort rounds", self.name, ABORT_ROUNDS)


def _socket_open(transport: asyncio.BaseTransport) -> bool:
    """Tell whether the socket of ``transport`` is still open (its file descriptor is valid)."""
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.fileno() != -1

"""A TCP proxy on 127.0.0.1 that caps each connection's download rate and delays its responses.

Object stores behind registries (S3, ECR's layer storage) limit each TCP connection to tens of
MB/s and add time to first byte, which is what parallel range requests work around. Benchmarks
put this proxy in front of a loopback registry to get those conditions back on one machine.

Per connection, bytes from the upstream server to the client pass a token bucket of
``rate_bytes_per_s`` with a burst of ``burst_bytes``. Each piece of client data counts as a
request, and the first upstream bytes after it are held until ``first_byte_delay_s`` after it
was forwarded. Client-to-upstream bytes are not limited.

Usage as a script (runs until interrupted, or for ``--duration`` seconds)::

    python benchmarks/throttle_proxy.py --upstream 127.0.0.1:5000 --rate-mb 50 --delay-ms 20

From Python::

    with ThrottleProxy("127.0.0.1", registry_port, rate_bytes_per_s=50e6) as proxy:
        pull(f"{proxy.host}/repo:tag")
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType

logger = logging.getLogger("benchmarks.throttle_proxy")

DEFAULT_RATE_BYTES_PER_S = 50_000_000
DEFAULT_FIRST_BYTE_DELAY_S = 0.020
# Large reads keep the per-byte CPU cost low; at 50 MB/s a 256 KiB read is about 5 ms of budget.
READ_SIZE = 256 * 1024
STREAM_LIMIT = 4 * READ_SIZE
START_TIMEOUT_S = 10.0


@dataclass
class ProxyStats:
    """Totals over the proxy's lifetime: connections accepted and bytes sent each way."""

    connections: int = 0
    bytes_to_client: int = 0
    bytes_to_upstream: int = 0


class TokenBucket:
    """A token bucket on the event loop's clock: ``rate_bytes_per_s`` with ``burst_bytes``.

    ``reserve`` books bytes and returns how many seconds to wait before sending them, so one
    sleep per read paces the stream with no timer per byte.
    """

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int) -> None:
        if rate_bytes_per_s <= 0:
            raise ValueError(f"rate_bytes_per_s must be positive, got {rate_bytes_per_s}")
        self.rate = rate_bytes_per_s
        self.burst_s = burst_bytes / rate_bytes_per_s
        self._ready_at = 0.0

    def reserve(self, size: int, now: float) -> float:
        """Book ``size`` bytes at time ``now`` (seconds) and return the wait in seconds."""
        # The bucket's debt is the time by which bookings run ahead of the clock. An idle
        # connection's debt falls to zero and no lower, so it cannot bank more than one burst.
        self._ready_at = max(self._ready_at, now) + size / self.rate
        return max(self._ready_at - now - self.burst_s, 0.0)


class ThrottleProxy:
    """Forward 127.0.0.1:``port`` to ``upstream_host:upstream_port`` with per-connection limits.

    Use ``start()``/``stop()`` (a background thread with its own event loop) or the context
    manager from synchronous code, or ``await serve()``/``await close()`` inside an event loop.
    ``port`` is known from construction because the listening socket is bound there.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        rate_bytes_per_s: float = DEFAULT_RATE_BYTES_PER_S,
        first_byte_delay_s: float = DEFAULT_FIRST_BYTE_DELAY_S,
        burst_bytes: int = READ_SIZE,
        listen_port: int = 0,
    ) -> None:
        if first_byte_delay_s < 0:
            raise ValueError(f"first_byte_delay_s must be >= 0, got {first_byte_delay_s}")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.rate_bytes_per_s = rate_bytes_per_s
        self.first_byte_delay_s = first_byte_delay_s
        self.burst_bytes = burst_bytes
        self.stats = ProxyStats()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", listen_port))
        self.port: int = self._socket.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # Inside an event loop.

    async def serve(self) -> None:
        """Start accepting connections on the bound socket and return."""
        self._server = await asyncio.start_server(
            self._accept, sock=self._socket, limit=STREAM_LIMIT
        )
        logger.info(
            "proxy %s -> %s:%d at %.1f MB/s per connection, %.0f ms to first byte",
            self.host,
            self.upstream_host,
            self.upstream_port,
            self.rate_bytes_per_s / 1e6,
            self.first_byte_delay_s * 1000,
        )

    async def close(self) -> None:
        """Stop accepting, abort open connections and wait for them to finish."""
        if self._server is not None:
            self._server.close()
        # Aborting the sockets ends each connection's pumps with EOF or a reset. Cancelling the
        # handler tasks instead makes asyncio (3.11) log a CancelledError for each of them.
        for link in list(self._links):
            link.abort()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=START_TIMEOUT_S)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        logger.info("proxy %s stopped after %d connections", self.host, self.stats.connections)

    # From synchronous code.

    def start(self) -> ThrottleProxy:
        """Serve from a daemon thread; raises ``RuntimeError`` if not serving within 10 s."""
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.serve())
            started.set()
            try:
                self._loop.run_forever()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name=f"throttle-proxy-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(START_TIMEOUT_S):
            raise RuntimeError(f"throttle proxy on {self.host} did not start")
        return self

    def stop(self) -> None:
        """Close the proxy and join its thread; safe to call twice."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.close(), self._loop).result(START_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT_S)

    def __enter__(self) -> ThrottleProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # One connection.

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.stats.connections += 1
        try:
            upstream_r, upstream_w = await asyncio.open_connection(
                self.upstream_host, self.upstream_port, limit=STREAM_LIMIT
            )
        except OSError as error:
            logger.warning(
                "upstream %s:%d unreachable: %s", self.upstream_host, self.upstream_port, error
            )
            client_w.close()
            self._connections.discard(task)
            return
        link = _Link(self, client_r, client_w, upstream_r, upstream_w)
        self._links.add(link)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(link.upload())
                group.create_task(link.download())
        except* ConnectionError as errors:
            logger.debug("connection on %s ended with %s", self.host, errors.exceptions[0])
        finally:
            for writer in (client_w, upstream_w):
                writer.close()
            self._links.discard(link)
            self._connections.discard(task)


class _Link:
    """The two directions of one proxied connection and their shared request timing."""

    def __init__(
        self,
        proxy: ThrottleProxy,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.client_r = client_r
        self.client_w = client_w
        self.upstream_r = upstream_r
        self.upstream_w = upstream_w
        self.bucket = TokenBucket(proxy.rate_bytes_per_s, proxy.burst_bytes)
        self.request_sent_at: float | None = None

    def abort(self) -> None:
        """Drop both sockets at once, without flushing what is buffered."""
        self.client_w.transport.abort()
        self.upstream_w.transport.abort()

    async def upload(self) -> None:
        loop = asyncio.get_running_loop()
        while data := await self.client_r.read(READ_SIZE):
            self.request_sent_at = loop.time()
            self.upstream_w.write(data)
            await self.upstream_w.drain()
            self.proxy.stats.bytes_to_upstream += len(data)
        with contextlib.suppress(OSError):
            self.upstream_w.write_eof()

    async def download(self) -> None:
        loop = asyncio.get_running_loop()
        while data := await self.upstream_r.read(READ_SIZE):
            if self.request_sent_at is not None:
                first_byte_at = self.request_sent_at + self.proxy.first_byte_delay_s
                self.request_sent_at = None
                await asyncio.sleep(max(first_byte_at - loop.time(), 0.0))
            wait = self.bucket.reserve(len(data), loop.time())
            if wait > 0:
                await asyncio.sleep(wait)
            self.client_w.write(data)
            await self.client_w.drain()
            self.proxy.stats.bytes_to_client += len(data)
        self.client_w.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the server to forward to")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: free)")
    parser.add_argument(
        "--rate-mb", type=float, default=50.0, help="per-connection cap in MB/s (10^6 bytes)"
    )
    parser.add_argument(
        "--delay-ms", type=float, default=20.0, help="delay to first response byte, in ms"
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    arguments = parser.parse_args()

    host, _, port = arguments.upstream.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    proxy = ThrottleProxy(
        host,
        int(port),
        rate_bytes_per_s=arguments.rate_mb * 1e6,
        first_byte_delay_s=arguments.delay_ms / 1000,
        listen_port=arguments.port,
    )
    with proxy:
        print(f"listening on {proxy.host}", flush=True)
        deadline = None if arguments.duration is None else time.monotonic() + arguments.duration
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    print(
        f"{proxy.stats.connections} connections, {proxy.stats.bytes_to_client} bytes to clients",
        flush=True,
    )


if __name__ == "__main__":
    main()

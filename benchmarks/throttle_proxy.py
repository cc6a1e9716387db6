"""A TCP proxy on 127.0.0.1 that caps each connection's download rate and delays its responses.

Object stores behind registries (S3, ECR's layer storage) limit each TCP connection to tens of
MB/s and add time to first byte, which is what parallel range requests work around. Benchmarks
put this proxy in front of a loopback registry to get those conditions back on one machine.

Per connection, bytes from the upstream server to the client pass a token bucket of
``rate_bytes_per_s`` with a burst of ``burst_bytes``. Each piece of client data counts as a
request, and the first upstream bytes after it are held until ``first_byte_delay_s`` after it
was forwarded. Client-to-upstream bytes are not limited.

Each connection runs on two threads, and response bytes move from the upstream socket to the
client socket through a pipe with ``splice(2)``, so they are never copied into Python. The
object store being imitated runs on other machines, so its cost should not take CPU from the
clients measured here. An earlier version on one asyncio event loop used about one core to
move 400 MB/s, on a 2-core machine where the client, the registry and the proxy share the CPU.
Linux only, because of ``splice``.

Usage as a script (runs until interrupted, or for ``--duration`` seconds)::

    python benchmarks/throttle_proxy.py --upstream 127.0.0.1:5000 --rate-mb 50 --delay-ms 20

From Python, in this process::

    with ThrottleProxy("127.0.0.1", registry_port, rate_bytes_per_s=50e6) as proxy:
        pull(f"{proxy.host}/repo:tag")

or in a process of its own, so that its threads share no interpreter with the measured client::

    with ProxyProcess("127.0.0.1:5000", rate_mb=50, delay_ms=20) as proxy:
        pull(f"{proxy.host}/repo:tag")
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

logger = logging.getLogger("benchmarks.throttle_proxy")

DEFAULT_RATE_BYTES_PER_S = 50_000_000
DEFAULT_FIRST_BYTE_DELAY_S = 0.020
# At 50 MB/s a 256 KiB piece is about 5 ms of budget: one sleep and one pair of splices each.
READ_SIZE = 256 * 1024
START_TIMEOUT_S = 10.0
# How long a stopped proxy waits for its connection threads to end.
STOP_TIMEOUT_S = 10.0


@dataclass
class ProxyStats:
    """Totals over the proxy's lifetime: connections accepted and bytes sent each way."""

    connections: int = 0
    bytes_to_client: int = 0
    bytes_to_upstream: int = 0


class TokenBucket:
    """A token bucket on a monotonic clock: ``rate_bytes_per_s`` with ``burst_bytes``.

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

    Use ``start()``/``stop()`` or the context manager. ``port`` is known from construction
    because the listening socket is bound there.
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
        self._stats_lock = threading.Lock()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", listen_port))
        self.port: int = self._socket.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self._links: set[_Link] = set()
        self._links_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ThrottleProxy:
        """Listen and accept connections on a daemon thread."""
        self._socket.listen(128)
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"throttle-proxy-{self.port}", daemon=True
        )
        self._thread.start()
        logger.info(
            "proxy %s -> %s:%d at %.1f MB/s per connection, %.0f ms to first byte",
            self.host,
            self.upstream_host,
            self.upstream_port,
            self.rate_bytes_per_s / 1e6,
            self.first_byte_delay_s * 1000,
        )
        return self

    def stop(self) -> None:
        """Stop accepting, drop every open connection and join the threads; safe to call twice."""
        if self._thread is None or self._stopping.is_set():
            return
        self._stopping.set()
        # shutdown() wakes the accept() blocked on the listening socket; close() alone does not.
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(STOP_TIMEOUT_S)
        self._socket.close()
        with self._links_lock:
            links = list(self._links)
        for link in links:
            link.abort()
        for link in links:
            link.join(STOP_TIMEOUT_S)
        logger.info("proxy %s stopped after %d connections", self.host, self.stats.connections)

    def __enter__(self) -> ThrottleProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._socket.accept()
            except OSError:
                return
            with self._stats_lock:
                self.stats.connections += 1
            try:
                upstream = socket.create_connection(
                    (self.upstream_host, self.upstream_port), timeout=START_TIMEOUT_S
                )
            except OSError as error:
                logger.warning(
                    "upstream %s:%d unreachable: %s", self.upstream_host, self.upstream_port, error
                )
                client.close()
                continue
            upstream.settimeout(None)
            link = _Link(self, client, upstream)
            with self._links_lock:
                self._links.add(link)
            link.start()

    def _count(self, to_client: int = 0, to_upstream: int = 0) -> None:
        with self._stats_lock:
            self.stats.bytes_to_client += to_client
            self.stats.bytes_to_upstream += to_upstream

    def _forget(self, link: _Link) -> None:
        with self._links_lock:
            self._links.discard(link)


class _Link:
    """The two directions of one proxied connection and their shared request timing."""

    def __init__(
        self, proxy: ThrottleProxy, client: socket.socket, upstream: socket.socket
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.bucket = TokenBucket(proxy.rate_bytes_per_s, proxy.burst_bytes)
        # Set by the upload thread when a request goes upstream, cleared by the download thread
        # when it holds back the first bytes of the response. HTTP/1.1 without pipelining sends
        # the next request only after the response, so the two threads never race on it.
        self.request_sent_at: float | None = None
        self._threads = [
            threading.Thread(target=self._run, args=(self._upload,), daemon=True),
            threading.Thread(target=self._run, args=(self._download,), daemon=True),
        ]
        self._ended = 0
        self._ended_lock = threading.Lock()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def abort(self) -> None:
        """Shut both sockets down, which wakes both threads."""
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _run(self, direction: Callable[[], None]) -> None:
        try:
            direction()
        except OSError as error:
            # A reset or a socket shut down by abort(); the other direction gets the same error.
            logger.debug("connection on %s ended with %s", self.proxy.host, error)
            self.abort()
        with self._ended_lock:
            self._ended += 1
            last = self._ended == len(self._threads)
        if last:
            self.client.close()
            self.upstream.close()
            self.proxy._forget(self)

    def _upload(self) -> None:
        while data := self.client.recv(READ_SIZE):
            self.request_sent_at = time.monotonic()
            self.upstream.sendall(data)
            self.proxy._count(to_upstream=len(data))
        with contextlib.suppress(OSError):
            self.upstream.shutdown(socket.SHUT_WR)

    def _download(self) -> None:
        read_end, write_end = os.pipe()
        try:
            # A pipe buffers 64 KiB by default; one piece of READ_SIZE fits after this.
            with contextlib.suppress(OSError):
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, READ_SIZE)
            upstream, client = self.upstream.fileno(), self.client.fileno()
            while size := os.splice(upstream, write_end, READ_SIZE):
                sent_at = self.request_sent_at
                if sent_at is not None:
                    self.request_sent_at = None
                    time.sleep(max(sent_at + self.proxy.first_byte_delay_s - time.monotonic(), 0))
                wait = self.bucket.reserve(size, time.monotonic())
                if wait > 0:
                    time.sleep(wait)
                remaining = size
                while remaining:
                    remaining -= os.splice(read_end, client, remaining)
                self.proxy._count(to_client=size)
            with contextlib.suppress(OSError):
                self.client.shutdown(socket.SHUT_WR)
        finally:
            os.close(read_end)
            os.close(write_end)


class ProxyProcess:
    """This script in a process of its own on a free loopback port; see the module docstring."""

    def __init__(self, upstream: str, rate_mb: float, delay_ms: float) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__)),
                "--upstream",
                upstream,
                "--rate-mb",
                str(rate_mb),
                "--delay-ms",
                str(delay_ms),
                # A bound on its life in case the parent dies without stopping it.
                "--duration",
                "7200",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"throttle proxy did not start: {line!r}")
        self.host = line.removeprefix("listening on ").strip()

    def stop(self) -> None:
        """Interrupt the process and wait for it; safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


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

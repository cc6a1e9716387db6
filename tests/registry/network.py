"""Loopback helpers shared by the registry fixtures: free ports and readiness polling."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

LOOPBACK = "127.0.0.1"


def bind_loopback() -> socket.socket:
    """Return a listening TCP socket bound to a free port on 127.0.0.1.

    Servers that accept a socket use it directly, which leaves no window for another process to
    take the port between choosing and binding it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(128)
    return sock


def free_port() -> int:
    """Return a port on 127.0.0.1 that was free a moment ago, for servers that bind by number."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(url: str, timeout_s: float, *, alive: object = None) -> None:
    """Poll ``url`` with GET until it returns any HTTP status, for at most ``timeout_s`` seconds.

    ``alive``, when given, is called before each attempt and should raise if the server process
    has exited, so a crashed server fails at once instead of after the timeout.
    Raises ``TimeoutError`` naming the URL when the server does not respond in time.
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if callable(alive):
            alive()
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError as error:
            last_error = error
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not respond within {timeout_s} s (last error: {last_error})")

"""Clients that stop reading their replies, over a raw socket on loopback.

aiohttp's client reads its socket on its own, so these tests speak the websocket handshake and
framing directly and never read after the handshake.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import struct
import time
from typing import Any

import pytest

from warmstart.server import ServerSettings
from warmstart.server.app import HUB

from .helpers import serving

# 2,000 endpoint names of 30 characters: every ``subscribed`` reply lists them, about 66 kB.
NAMES = [f"endpoint-{index:021d}" for index in range(2000)]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def masked_text_frame(text: str) -> bytes:
    """Encode one client text frame (RFC 6455: clients mask every frame)."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        head = bytes([0x81, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([0x81, 0x80 | 126]) + struct.pack("!H", size)
    else:
        head = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", size)
    mask = os.urandom(4)
    body = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return head + mask + body


async def open_reader_that_never_reads(
    port: int,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect with a small receive buffer and finish the websocket handshake."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b" 101 " in head.split(b"\r\n")[0], head
    return reader, writer


async def open_stalled_client(client: Any) -> tuple[Any, asyncio.StreamWriter]:
    """Connect, then send subscribe frames whose replies, 66 kB each, the client never reads.

    Return the service's hub and the client's stream writer.
    """
    hub = client.app[HUB]
    _, writer = await open_reader_that_never_reads(client.port)
    for connection in hub.connections.values():
        # A small server send buffer makes the writer block after a few replies.
        transport_socket = connection.ws.get_extra_info("socket")
        transport_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer.write(masked_text_frame(json.dumps({"type": "subscribe", "endpoints": NAMES})))
    frame = masked_text_frame(json.dumps({"type": "subscribe", "endpoints": []}))
    # 1.3 MB of replies, far more than the socket buffers and aiohttp's write buffer hold.
    for _ in range(20):
        writer.write(frame)
    return hub, writer


async def wait_stalled(hub: Any, timeout_s: float) -> None:
    """Wait until the writer has been blocked for 0.3 s, or the client is disconnected."""
    deadline = time.monotonic() + timeout_s
    blocked_since = None
    while hub.connections:
        assert time.monotonic() < deadline, f"the writer never blocked in {timeout_s} s"
        if all(c.stalled for c in hub.connections.values()):
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > 0.3:
                return
        else:
            blocked_since = None
        await asyncio.sleep(0.01)


async def wait_disconnected(hub: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while hub.connections:
        assert time.monotonic() < deadline, f"client still connected after {timeout_s} s"
        await asyncio.sleep(0.05)


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def test_client_that_never_reads_is_disconnected() -> None:
    async def scenario() -> None:
        settings = ServerSettings(max_unanswered_frames=2, send_timeout_s=0.5)
        async with serving(settings=settings) as client:
            hub, writer = await open_stalled_client(client)
            await wait_disconnected(hub, timeout_s=10)
            response = await client.get("/metrics")
            metrics = await response.text()
            await close_quietly(writer)
        assert "warmstart_connected_clients 0" in metrics

    run(scenario())


def test_client_gone_while_stalled_is_forgotten() -> None:
    async def scenario() -> None:
        # A send timeout longer than the test: the connection must end because the peer went.
        settings = ServerSettings(max_unanswered_frames=2, send_timeout_s=600.0)
        async with serving(settings=settings) as client:
            hub, writer = await open_stalled_client(client)
            await wait_stalled(hub, timeout_s=10)
            # Closing with unread data in the receive buffer sends a reset.
            await close_quietly(writer)
            await wait_disconnected(hub, timeout_s=10)

    run(scenario())


def test_shutdown_aborts_client_that_never_reads() -> None:
    async def scenario() -> float:
        settings = ServerSettings(
            max_unanswered_frames=2, send_timeout_s=600.0, shutdown_timeout_s=0.5
        )
        async with serving(settings=settings) as client:
            hub, writer = await open_stalled_client(client)
            await wait_stalled(hub, timeout_s=10)
            started = time.monotonic()
        elapsed_s = time.monotonic() - started
        await close_quietly(writer)
        return elapsed_s

    # Flushing and closing may take 0.5 s each before the socket is aborted.
    assert run(scenario()) < 5.0


def test_client_gone_during_handshake_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving() as client:
            for _ in range(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
                writer.write(
                    b"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                writer.write_eof()
                await asyncio.wait_for(reader.read(), 5)
                await close_quietly(writer)
            async with client.ws_connect("/v1/stream") as ws:
                await ws.send_str(json.dumps({"type": "subscribe", "id": 1}))
                reply = await ws.receive_json(timeout=5)
        assert reply["type"] == "subscribed"

    with caplog.at_level(logging.INFO):
        run(scenario())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert "closed the connection during the handshake" in caplog.text

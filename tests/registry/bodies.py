"""Blob responses with HTTP Range support and the body faults of ``tests.registry.faults``."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence

from aiohttp import web

from tests.registry import faults

logger = logging.getLogger("tests.registry.bodies")

_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
# Bodies are written in pieces of this size so that a large blob does not sit in one buffer.
WRITE_SIZE = 256 * 1024


class Unsatisfiable(Exception):
    """The requested range starts at or beyond the end of the blob."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the inclusive ``(start, end)`` of a single-range header, or ``None`` to ignore it.

    A missing, malformed or multi-range header is ignored (the whole blob is sent with 200), as
    RFC 9110 allows. Raises ``Unsatisfiable`` for a valid range that selects no byte.
    """
    if header is None or "," in header:
        return None
    match = _SINGLE_RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":
        length = int(last)
        if length == 0 or size == 0:
            raise Unsatisfiable
        return max(size - length, 0), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, end


def _flip_byte(data: bytes, offset: int | None) -> bytes:
    if not data:
        return data
    position = len(data) // 2 if offset is None else offset % len(data)
    changed = bytearray(data)
    changed[position] ^= 0xFF
    return bytes(changed)


async def _write(response: web.StreamResponse, data: bytes) -> None:
    for offset in range(0, len(data), WRITE_SIZE):
        await response.write(data[offset : offset + WRITE_SIZE])


async def _wait_for_release(pause: faults.Pause) -> None:
    pause.paused.set()
    deadline = time.monotonic() + pause.timeout_s
    while not pause.release.is_set():
        if time.monotonic() > deadline:
            logger.warning("pause not released within %.1f s; sending the rest", pause.timeout_s)
            return
        await asyncio.sleep(0.01)


async def send_blob(
    request: web.Request, data: bytes, digest: str, body_faults: Sequence[faults.Fault]
) -> web.StreamResponse:
    """Send ``data``, or the range in the ``Range`` header, with ``body_faults`` applied."""
    size = len(data)
    headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
    headers["Accept-Ranges"] = "bytes"

    for fault in body_faults:
        if isinstance(fault, faults.WrongBytes):
            fault.fire()
            data = _flip_byte(data, fault.offset)

    try:
        requested = parse_range(request.headers.get("Range"), size)
    except Unsatisfiable:
        headers["Content-Range"] = f"bytes */{size}"
        return web.Response(status=416, headers=headers)

    status = 200
    body = data
    if requested is not None:
        ignore = next((f for f in body_faults if isinstance(f, faults.IgnoreRange)), None)
        if ignore is not None:
            ignore.fire()
        else:
            start, end = requested
            stated = (start, end)
            shift = next((f for f in body_faults if isinstance(f, faults.WrongRangeStart)), None)
            if shift is not None:
                shift.fire()
                start = min(start + shift.shift, size - 1)
                end = min(end + shift.shift, size - 1)
                if shift.honest_header:
                    stated = (start, end)
            status = 206
            body = data[start : end + 1]
            headers["Content-Range"] = f"bytes {stated[0]}-{stated[1]}/{size}"
            unstated = next((f for f in body_faults if isinstance(f, faults.NoContentRange)), None)
            if unstated is not None:
                unstated.fire()
                del headers["Content-Range"]

    declared = len(body)
    sent = len(body)
    stall: faults.Stall | None = None
    pause: faults.Pause | None = None
    for fault in body_faults:
        if isinstance(fault, faults.TruncateBody):
            fault.fire()
            sent = min(sent, fault.after_bytes)
        elif isinstance(fault, faults.EmptyBody):
            fault.fire()
            sent = 0
        elif isinstance(fault, faults.WrongContentLength):
            fault.fire()
            declared = max(declared + fault.delta, 0)
            sent = min(sent, declared)
        elif isinstance(fault, faults.Stall):
            fault.fire()
            stall = fault
        elif isinstance(fault, faults.Pause):
            fault.fire()
            pause = fault

    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = declared
    await response.prepare(request)
    position = 0
    if stall is not None:
        position = min(stall.after_bytes, sent)
        await _write(response, body[:position])
        await asyncio.sleep(stall.seconds)
    elif pause is not None:
        position = min(pause.after_bytes, sent)
        await _write(response, body[:position])
        await _wait_for_release(pause)
    await _write(response, body[position:sent])
    if sent < declared:
        # Closing the transport is what a proxy or server crash looks like to the client: the
        # headers promised more bytes than ever arrive.
        logger.info("closing connection after %d of %d body bytes for %s", sent, declared, digest)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response

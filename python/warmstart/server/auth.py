"""Optional bearer-token authentication for every route except the health probes."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from warmstart.server.errors import ConfigError

logger = logging.getLogger("warmstart.server.auth")

# Kubelet and load balancer probes carry no credentials.
OPEN_PATHS = frozenset(("/healthz", "/readyz"))


def read_token(path: Path) -> bytes:
    """Read a token file (surrounding whitespace removed); raise ``ConfigError`` if unusable."""
    try:
        token = path.read_bytes().strip()
    except OSError as error:
        raise ConfigError(f"cannot read token file {path}: {error.strerror}") from error
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def bearer_middleware(token: bytes, on_reject: Callable[[web.Request], None]) -> Middleware:
    """Return middleware that answers 401 unless ``Authorization: Bearer <token>`` matches.

    The comparison takes the same time wherever the first wrong byte is (``hmac.compare_digest``).
    ``on_reject`` is called for each rejected request; the token is never logged.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, offered = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token):
            return await handler(request)
        on_reject(request)
        return web.json_response(
            {"error": "missing or invalid bearer token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="warmstart"'},
        )

    return middleware

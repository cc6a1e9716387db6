"""The aiohttp application: the ``/v1/stream`` websocket and the HTTP routes.

``make_app(engine)`` returns an application that can run alone (``warmstart serve``) or be
mounted in another aiohttp service. On startup it starts the hub's ingest task and also the
engine, unless ``start_engine=False``. On shutdown it finishes queued batches, closes sockets
with 1001 (going away) and stops what it started.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.typedefs import Middleware

from warmstart.engine import Engine, EngineConfigError, UnknownEndpointError
from warmstart.server import metrics
from warmstart.server.auth import bearer_middleware
from warmstart.server.config import ServerSettings, endpoint_spec
from warmstart.server.errors import ConfigError, FrameError
from warmstart.server.hub import Connection, Hub, subscribed
from warmstart.server.protocol import (
    InstanceEvents,
    SampleBatch,
    Subscribe,
    error_frame,
    frame_id_of,
    parse_frame,
)

logger = logging.getLogger("warmstart.server")

HUB = web.AppKey("warmstart_hub", Hub)


def make_app(
    engine: Engine,
    *,
    token: bytes | None = None,
    settings: ServerSettings | None = None,
    documents: dict[str, dict[str, Any]] | None = None,
    start_engine: bool = True,
) -> web.Application:
    """Build the service around ``engine``.

    ``token``: when set, every route except ``/healthz`` and ``/readyz`` requires
    ``Authorization: Bearer <token>``. ``documents``: the configuration tables of the engine's
    endpoints, returned by ``GET /v1/endpoints/NAME``. ``start_engine``: start the engine with
    the application and stop it on cleanup; pass False when the caller runs the engine.
    """
    hub = Hub(engine, settings if settings is not None else ServerSettings())
    for name in engine.endpoints:
        hub.documents[name] = (documents or {}).get(name)
    middlewares: list[Middleware] = []
    if token is not None:

        def on_reject(request: web.Request) -> None:
            hub.counters.unauthorized += 1
            hub.log_rejected(
                "unauthorized",
                request.remote or "-",
                f"rejected {request.method} {request.path}: missing or invalid bearer token",
            )

        middlewares.append(bearer_middleware(token, on_reject))
    app = web.Application(middlewares=middlewares)
    app[HUB] = hub
    app.router.add_get("/v1/stream", stream)
    app.router.add_get("/v1/endpoints", list_endpoints)
    app.router.add_get("/v1/endpoints/{name}", get_endpoint)
    app.router.add_put("/v1/endpoints/{name}", put_endpoint)
    app.router.add_delete("/v1/endpoints/{name}", delete_endpoint)
    app.router.add_get("/v1/endpoints/{name}/decisions", get_decisions)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", get_metrics)

    async def on_startup(app: web.Application) -> None:
        await hub.start()
        if start_engine:
            await engine.start()
        logger.info("service started with %d endpoint(s)", len(engine.endpoints))

    async def on_shutdown(app: web.Application) -> None:
        logger.info(
            "service stopping: finishing queued batches and closing %d socket(s)",
            len(hub.connections),
        )
        await hub.drain()

    async def on_cleanup(app: web.Application) -> None:
        await hub.close()
        if start_engine:
            await engine.stop()
        logger.info("service stopped")

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


# -- websocket -------------------------------------------------------------------------------


async def stream(request: web.Request) -> web.StreamResponse:
    """Serve one ``/v1/stream`` client until it closes or the service drains."""
    hub = request.app[HUB]
    if hub.draining:
        raise web.HTTPServiceUnavailable(text="server is shutting down")
    settings = hub.settings
    ws = web.WebSocketResponse(
        max_msg_size=4 * settings.max_frame_bytes, heartbeat=settings.heartbeat_s
    )
    try:
        await ws.prepare(request)
    except ConnectionResetError:
        # Without this, aiohttp logs a traceback at error level for every such client.
        logger.info("client at %s closed the connection during the handshake", request.remote)
        # aiohttp tries to send this one too, and ignores the ConnectionError that follows.
        return web.Response()
    connection = hub.connect(ws, request.remote or "-", request.transport)
    try:
        while True:
            if not await connection.take_credit():
                break
            message = await ws.receive()
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            if message.type is WSMsgType.ERROR:
                # aiohttp closes the socket with the code for the violation (1002, 1007 or
                # 1009).
                logger.warning("client %d: protocol violation: %s", connection.id, ws.exception())
                break
            await _handle(hub, connection, message.type, message.data)
    finally:
        await hub.disconnect(connection)
    return ws


async def _handle(hub: Hub, connection: Connection, kind: WSMsgType, data: Any) -> None:
    """Reply to one data frame; every path ends in one ``reply``, which returns a credit."""
    if kind is WSMsgType.BINARY:
        _reject_frame(
            hub,
            connection,
            None,
            "binary_frame",
            "binary frames are not supported; send JSON in text frames",
        )
        return
    if kind is not WSMsgType.TEXT:
        _reject_frame(hub, connection, None, "unexpected_frame", f"unexpected frame {kind.name}")
        return
    text: str = data
    limit = hub.settings.max_frame_bytes
    # str.isascii() is O(1) in CPython, so only frames with other characters are encoded.
    size = len(text) if text.isascii() else len(text.encode())
    if size > limit:
        _reject_frame(
            hub,
            connection,
            None,
            "frame_too_large",
            f"frame of {size} bytes is over the limit of {limit} bytes; split the batch",
        )
        return
    try:
        message = parse_frame(text)
    except FrameError as error:
        _reject_frame(hub, connection, frame_id_of(text), error.code, str(error))
        return
    if isinstance(message, SampleBatch | InstanceEvents):
        if hub.draining:
            _reject_frame(
                hub,
                connection,
                message.frame_id,
                "shutting_down",
                "server is shutting down; resend to another instance",
            )
            return
        await hub.submit(connection, message)
        return
    try:
        if isinstance(message, Subscribe):
            connection.subscribe(message.endpoints)
        else:
            connection.unsubscribe(message.endpoints)
    except FrameError as error:
        _reject_frame(hub, connection, message.frame_id, error.code, str(error))
        return
    connection.reply(subscribed(message.frame_id, connection))


def _reject_frame(hub: Hub, connection: Connection, frame_id: Any, code: str, message: str) -> None:
    hub.counters.frames_rejected[code] += 1
    hub.log_rejected(code, connection.id, f"rejected frame: {message}")
    connection.reply(error_frame(frame_id, code, message))


# -- HTTP ------------------------------------------------------------------------------------


def _json_error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json")


async def list_endpoints(request: web.Request) -> web.Response:
    """``GET /v1/endpoints``: the names of every endpoint."""
    return web.json_response({"endpoints": list(request.app[HUB].engine.endpoints)})


async def get_endpoint(request: web.Request) -> web.Response:
    """``GET /v1/endpoints/NAME``: the endpoint's configuration and a state snapshot."""
    hub = request.app[HUB]
    name = request.match_info["name"]
    try:
        state = hub.engine.state(name)
    except UnknownEndpointError:
        raise _json_error(web.HTTPNotFound, f"endpoint {name!r} not found") from None
    last = state.last_decision
    return web.json_response(
        {
            "name": name,
            "config": hub.documents.get(name),
            "state": {
                "desired": state.desired,
                "current": state.current,
                "ready": state.ready,
                "pending": state.pending,
                "draining": state.draining,
                "timed_out": state.timed_out,
                "time_to_ready_s": state.time_to_ready_s,
                "last_decision": None
                if last is None
                else {"at": last.at, "desired": last.desired, "reason": last.reason},
            },
        }
    )


async def put_endpoint(request: web.Request) -> web.Response:
    """``PUT /v1/endpoints/NAME``: create (201) or replace (200) an endpoint.

    Replacing an endpoint discards its windows, policy state and decision history.
    """
    hub = request.app[HUB]
    name = request.match_info["name"]
    try:
        document = await request.json()
    except ValueError as error:
        raise _json_error(web.HTTPBadRequest, f"body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise _json_error(web.HTTPBadRequest, "body must be a JSON object")
    try:
        spec = endpoint_spec(name, document)
    except ConfigError as error:
        raise _json_error(web.HTTPBadRequest, str(error)) from None
    engine = hub.engine
    existed = name in engine.endpoints
    try:
        if existed:
            engine.remove_endpoint(name)
            hub.forget(name)
        engine.add_endpoint(spec)
    except EngineConfigError as error:
        raise _json_error(web.HTTPBadRequest, str(error)) from None
    hub.documents[name] = document
    logger.info("endpoint %s %s over the API", name, "replaced" if existed else "created")
    return web.json_response({"name": name, "config": document}, status=200 if existed else 201)


async def delete_endpoint(request: web.Request) -> web.Response:
    """``DELETE /v1/endpoints/NAME``: stop scaling an endpoint (204, or 404 if unknown)."""
    hub = request.app[HUB]
    name = request.match_info["name"]
    try:
        hub.engine.remove_endpoint(name)
    except UnknownEndpointError:
        raise _json_error(web.HTTPNotFound, f"endpoint {name!r} not found") from None
    hub.forget(name)
    hub.documents.pop(name, None)
    logger.info("endpoint %s deleted over the API", name)
    return web.Response(status=204)


async def get_decisions(request: web.Request) -> web.Response:
    """``GET /v1/endpoints/NAME/decisions?since=SEQ``: kept decisions after sequence ``SEQ``."""
    hub = request.app[HUB]
    name = request.match_info["name"]
    if name not in hub.engine.endpoints:
        raise _json_error(web.HTTPNotFound, f"endpoint {name!r} not found")
    raw = request.query.get("since", "0")
    try:
        since = int(raw)
    except ValueError:
        raise _json_error(
            web.HTTPBadRequest, f"since must be a decision sequence number, got {raw!r}"
        ) from None
    decisions = hub.history(name, since)
    following = decisions[-1]["seq"] if decisions else since
    return web.json_response({"endpoint": name, "decisions": decisions, "next": following})


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 while the process serves requests."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 while accepting clients, 503 once shutting down."""
    hub = request.app[HUB]
    if hub.draining:
        return web.json_response({"status": "shutting down"}, status=503)
    return web.json_response({"status": "ready", "endpoints": len(hub.engine.endpoints)})


async def get_metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format."""
    body = metrics.render(request.app[HUB])
    return web.Response(body=body.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})

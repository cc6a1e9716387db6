"""Servers on loopback and websocket helpers shared by the service and client tests."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from warmstart.engine import (
    Behavior,
    EndpointSpec,
    Engine,
    MetricSpec,
    ScalingRules,
    TargetTracking,
)
from warmstart.server import ServerSettings, WallClock, make_app

# No stabilization, rate limit, hold or tolerance, so one evaluation follows the samples.
DIRECT = Behavior(
    scale_up=ScalingRules(0.0, ()),
    scale_down=ScalingRules(0.0, ()),
    tolerance=0.0,
    restart_hold_s=0.0,
)


def tracking_spec(name: str = "llm", target: float = 10.0) -> EndpointSpec:
    """Return an endpoint tracking ``concurrency`` at ``target`` per instance."""
    return EndpointSpec(
        name,
        (MetricSpec("concurrency"),),
        (TargetTracking("concurrency", target, window_s=10.0),),
        max_capacity=1000,
        behavior=DIRECT,
    )


def make_engine(*names: str, **kwargs: Any) -> Engine:
    return Engine([tracking_spec(n) for n in names or ("llm",)], clock=WallClock(), **kwargs)


@contextlib.asynccontextmanager
async def serving(
    engine: Engine | None = None,
    *,
    token: bytes | None = None,
    settings: ServerSettings | None = None,
    start_engine: bool = False,
    port: int | None = None,
) -> AsyncIterator[TestClient[Any, Any]]:
    """Serve ``make_app(engine)`` on 127.0.0.1 and yield a client; stop both on exit.

    The engine's background loop is off by default, so tests call ``engine.evaluate()``.
    """
    engine = engine if engine is not None else make_engine()
    app = make_app(engine, token=token, settings=settings, start_engine=start_engine)
    server = TestServer(app, host="127.0.0.1", port=port)
    async with TestClient(server) as client:
        yield client
    if not start_engine:
        await engine.stop()


def columns(values: list[Any], endpoint: Any = "llm", frame_id: Any = 1, **extra: Any) -> str:
    """Build a columnar frame of ``values`` stamped now, one instance."""
    now = time.time()
    return json.dumps(
        {
            "type": "columns",
            "id": frame_id,
            "endpoint": endpoint,
            "metric": "concurrency",
            "instance": "pod-a",
            "timestamp_s": [now] * len(values),
            "value": values,
            **extra,
        }
    )


async def receive_json(ws: ClientWebSocketResponse, timeout_s: float = 5.0) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout_s)
    assert message.type is WSMsgType.TEXT, f"expected a text frame, got {message}"
    frame: dict[str, Any] = json.loads(message.data)
    return frame


async def reply_to(ws: ClientWebSocketResponse) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Read the reply to one sample frame: an optional error frame, then the ack or error.

    ``slow_down`` notices, sent when the ingest queue is full, are skipped.
    """
    first = await receive_json(ws)
    while first["type"] == "slow_down":
        first = await receive_json(ws)
    if first["type"] == "error" and first["code"] == "samples_rejected":
        return first, await receive_json(ws)
    return None, first

"""HTTP routes, bearer-token auth and graceful shutdown of `warmstart serve`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from .helpers import columns, make_engine, reply_to, serving

ENDPOINT = {
    "min_capacity": 1,
    "max_capacity": 20,
    "metrics": [{"name": "concurrency"}],
    "policies": [{"type": "target_tracking", "metric": "concurrency", "target": 8}],
}


def test_endpoint_put_get_delete() -> None:
    async def scenario() -> None:
        async with serving(make_engine("llm")) as client:
            created = await client.put("/v1/endpoints/new", json=ENDPOINT)
            replaced = await client.put("/v1/endpoints/new", json=ENDPOINT)
            fetched = await (await client.get("/v1/endpoints/new")).json()
            listed = await (await client.get("/v1/endpoints")).json()
            deleted = await client.delete("/v1/endpoints/new")
            missing = await client.get("/v1/endpoints/new")
            deleted_again = await client.delete("/v1/endpoints/new")
        assert created.status == 201
        assert replaced.status == 200
        assert fetched["config"] == ENDPOINT
        assert fetched["state"]["desired"] == 1
        assert listed["endpoints"] == ["llm", "new"]
        assert deleted.status == 204
        assert missing.status == 404
        assert deleted_again.status == 404

    run(scenario())


def test_endpoint_put_invalid_names_key() -> None:
    async def scenario() -> None:
        document = dict(
            ENDPOINT,
            policies=[{"type": "target_tracking", "metric": "concurrency", "target": "eight"}],
        )
        async with serving() as client:
            response = await client.put("/v1/endpoints/bad", json=document)
            body = await response.json()
            not_json = await client.put("/v1/endpoints/bad", data=b"{")
        assert response.status == 400
        assert "endpoints.bad.policies[0].target" in body["error"]
        assert "'eight'" in body["error"]
        assert not_json.status == 400

    run(scenario())


def test_added_endpoint_accepts_samples() -> None:
    async def scenario() -> None:
        async with serving() as client:
            await client.put("/v1/endpoints/new", json=ENDPOINT)
            async with client.ws_connect("/v1/stream") as ws:
                await ws.send_str(columns([1.0, 2.0], endpoint="new"))
                _, ack = await reply_to(ws)
        assert ack["accepted"] == 2

    run(scenario())


def test_decisions_since_sequence() -> None:
    async def scenario() -> None:
        engine = make_engine()
        async with serving(engine) as client, client.ws_connect("/v1/stream") as ws:
            await ws.send_str(columns([45.0]))
            await reply_to(ws)
            engine.evaluate()
            await ws.send_str(columns([95.0] * 20))
            await reply_to(ws)
            engine.evaluate()
            everything = await (await client.get("/v1/endpoints/llm/decisions")).json()
            first_seq = everything["decisions"][0]["seq"]
            later = await (
                await client.get(f"/v1/endpoints/llm/decisions?since={first_seq}")
            ).json()
            invalid = await client.get("/v1/endpoints/llm/decisions?since=yesterday")
        assert [d["desired"] for d in everything["decisions"]] == [5, 10]
        assert [d["desired"] for d in later["decisions"]] == [10]
        assert later["next"] == everything["next"]
        assert invalid.status == 400

    run(scenario())


def test_metrics_page_counts() -> None:
    async def scenario() -> None:
        engine = make_engine()
        async with serving(engine) as client, client.ws_connect("/v1/stream") as ws:
            await ws.send_str(columns([45.0, float("nan")]))
            await reply_to(ws)
            engine.evaluate()
            response = await client.get("/metrics")
            text = await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "warmstart_samples_accepted_total 1" in text
        assert 'warmstart_samples_rejected_total{reason="nan_value"} 1' in text
        assert 'warmstart_decisions_total{endpoint="llm"} 1' in text
        assert 'warmstart_capacity_desired{endpoint="llm"} 5' in text
        assert 'warmstart_capacity_current{endpoint="llm"} 5' in text
        assert "warmstart_connected_clients 1" in text

    run(scenario())


def test_token_required_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    token = "s3cret-token-value"

    async def scenario() -> None:
        async with serving(token=token.encode()) as client:
            bare = await client.get("/v1/endpoints")
            wrong = await client.get("/v1/endpoints", headers={"Authorization": "Bearer nope"})
            right = await client.get("/v1/endpoints", headers={"Authorization": f"Bearer {token}"})
            health = await client.get("/healthz")
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await client.ws_connect("/v1/stream", headers={"Authorization": "Bearer x"})
            async with client.ws_connect(
                "/v1/stream", headers={"Authorization": f"Bearer {token}"}
            ) as ws:
                await ws.send_str(columns([1.0]))
                _, ack = await reply_to(ws)
        assert bare.status == 401
        assert bare.headers["WWW-Authenticate"].startswith("Bearer")
        assert wrong.status == 401
        assert right.status == 200
        assert health.status == 200
        assert refused.value.status == 401
        assert ack["accepted"] == 1

    with caplog.at_level(logging.DEBUG):
        run(scenario())
    assert "missing or invalid bearer token" in caplog.text
    assert token not in caplog.text


def test_readyz_ready_while_serving() -> None:
    async def scenario() -> None:
        async with serving() as client:
            response = await client.get("/readyz")
        assert response.status == 200

    run(scenario())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


CONFIG = """
[endpoints.llm]
min_capacity = 1
max_capacity = 50

[[endpoints.llm.metrics]]
name = "concurrency"

[[endpoints.llm.policies]]
type = "target_tracking"
metric = "concurrency"
target = 10
window_s = 10
"""


def test_sigterm_finishes_batches_and_closes_1001(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(CONFIG)
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "warmstart",
            "-v",
            "serve",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        assert "listening" in process.stdout.readline()

        async def scenario() -> tuple[int, list[dict[str, object]], int | None]:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/v1/stream"
                async with session.ws_connect(url) as ws:
                    for frame_id in range(20):
                        await ws.send_str(columns([1.0] * 1000, frame_id=frame_id))
                    process.send_signal(signal.SIGTERM)
                    acks = []
                    while True:
                        message = await ws.receive(timeout=10)
                        if message.type is not aiohttp.WSMsgType.TEXT:
                            break
                        frame = json.loads(message.data)
                        if frame["type"] == "ack":
                            acks.append(frame)
                    return len(acks), acks, ws.close_code

        count, acks, close_code = asyncio.run(scenario())
        _, stderr = process.communicate(timeout=30)
        status = process.returncode
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert close_code == 1001
    assert count == 20
    assert sum(int(a["accepted"]) for a in acks) == 20_000  # type: ignore[call-overload]
    assert status == 0
    assert "client 1 connected" in stderr
    assert "client 1 disconnected" in stderr
    assert "service stopped" in stderr


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]

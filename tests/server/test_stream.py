"""The /v1/stream websocket over loopback: round trips, bad input, subscriptions, load."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from warmstart.engine import Decision, IngestConfig, InstanceEvent
from warmstart.server import ServerSettings
from warmstart.server.app import HUB
from warmstart.server.hub import MAX_SUBSCRIPTION_NAMES

from .helpers import columns, make_engine, receive_json, reply_to, serving


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_columns_batch_is_acked_and_ingested() -> None:
    async def scenario() -> None:
        engine = make_engine()
        async with serving(engine) as client, client.ws_connect("/v1/stream") as ws:
            await ws.send_str(columns([30.0] * 1000, frame_id=7))
            error, ack = await reply_to(ws)
            decision = engine.evaluate()[0]
        assert error is None
        assert ack == {"type": "ack", "id": 7, "accepted": 1000, "rejected": {}}
        assert decision.desired == 3

    run(scenario())


def test_sample_list_is_acked_per_instance() -> None:
    async def scenario() -> None:
        engine = make_engine()
        now = time.time()
        samples = [
            {
                "endpoint": "llm",
                "metric": "concurrency",
                "instance": f"pod-{i}",
                "timestamp_s": now,
                "value": 25.0,
            }
            for i in range(4)
        ]
        async with serving(engine) as client, client.ws_connect("/v1/stream") as ws:
            await ws.send_str(json.dumps({"type": "samples", "id": "a", "samples": samples}))
            _, ack = await reply_to(ws)
            decision = engine.evaluate()[0]
        assert ack["accepted"] == 4
        assert engine.series_count == 4
        assert decision.desired == 10

    run(scenario())


BAD_BATCHES = [
    pytest.param(["x", 1.0, 2.0], "llm", {"invalid_value": 1}, 2, id="string-value"),
    pytest.param([True, 1.0], "llm", {"invalid_value": 1}, 1, id="boolean-value"),
    pytest.param([None, 1.0], "llm", {"invalid_value": 1}, 1, id="null-value"),
    pytest.param([10**400, 1.0], "llm", {"value_out_of_range": 1}, 1, id="huge-integer"),
    pytest.param([-1.0, 1.0], "llm", {"negative_count": 1}, 1, id="negative-count"),
    pytest.param([1.0, 2.0], "nope", {"unknown_endpoint": 2}, 0, id="unknown-endpoint"),
    pytest.param([1.0, 2.0, 3.0], ["llm", "nope"], {"unknown_endpoint": 1}, 2, id="name-column"),
    pytest.param([1.0, 2.0], ["llm", ""], {"invalid_name": 1}, 1, id="empty-name"),
]


@pytest.mark.parametrize(("values", "endpoint", "rejected", "accepted"), BAD_BATCHES)
def test_bad_samples_rejected_good_ones_kept(
    values: list[Any], endpoint: Any, rejected: dict[str, int], accepted: int
) -> None:
    async def scenario() -> None:
        async with serving() as client, client.ws_connect("/v1/stream") as ws:
            if isinstance(endpoint, list):
                names = endpoint + ["llm"] * (len(values) - len(endpoint))
            else:
                names = endpoint
            await ws.send_str(columns(values, endpoint=names))
            error, ack = await reply_to(ws)
        assert ack["accepted"] == accepted
        assert ack["rejected"] == rejected
        if rejected:
            assert error is not None
            for reason in rejected:
                assert reason in error["message"]

    run(scenario())


def test_nan_and_infinity_rejected_by_reason() -> None:
    async def scenario() -> None:
        async with serving() as client, client.ws_connect("/v1/stream") as ws:
            now = time.time()
            # Python's json module writes and reads NaN and Infinity tokens.
            text = json.dumps(
                {
                    "type": "columns",
                    "id": 1,
                    "endpoint": "llm",
                    "metric": "concurrency",
                    "instance": "pod-a",
                    "timestamp_s": [now] * 3,
                    "value": [float("nan"), float("inf"), 4.0],
                }
            )
            await ws.send_str(text)
            error, ack = await reply_to(ws)
        assert ack is not None
        assert ack["accepted"] == 1
        assert ack["rejected"] == {"nan_value": 1, "infinite_value": 1}
        assert error is not None
        assert error["code"] == "samples_rejected"

    run(scenario())


def test_engine_rejects_name_row_and_value() -> None:
    async def scenario() -> None:
        async with serving() as client, client.ws_connect("/v1/stream") as ws:
            now = time.time()
            far = now + 86_400.0
            values = [4.0, float("nan"), -3.5, 1.0]
            await ws.send_str(columns(values, timestamp_s=[now, now, now, far]))
            error, ack = await reply_to(ws)
        assert ack["accepted"] == 1
        assert error is not None
        message = error["message"]
        assert "nan_value: 1 (first row 1: value nan)" in message
        assert "negative_count: 1 (first row 2: value -3.5)" in message
        assert f"too_far_in_future: 1 (first row 3: timestamp_s {far!r}" in message

    run(scenario())


def test_series_limit_keeps_known_series() -> None:
    async def scenario() -> None:
        engine = make_engine(ingest=IngestConfig(max_series_per_endpoint=3))
        async with serving(engine) as client, client.ws_connect("/v1/stream") as ws:
            instances = [f"pod-{index}" for index in range(5)] + ["pod-0"]
            await ws.send_str(columns([1.0] * 6, instance=instances))
            error, ack = await reply_to(ws)
        assert ack["accepted"] == 4
        assert ack["rejected"] == {"too_many_series": 2}
        assert error is not None
        expected = 'first row 3: endpoint "llm" has reached its limit of 3 live series'
        assert expected in error["message"]
        assert engine.series_count == 3

    run(scenario())


def test_subscription_size_is_bounded() -> None:
    async def scenario() -> None:
        async with serving() as client, client.ws_connect("/v1/stream") as ws:
            hub = client.app[HUB]  # type: ignore[index]
            names = [f"endpoint-{index}" for index in range(MAX_SUBSCRIPTION_NAMES)]
            await ws.send_str(json.dumps({"type": "subscribe", "id": 1, "endpoints": names}))
            first = await receive_json(ws)
            await ws.send_str(json.dumps({"type": "subscribe", "id": 2, "endpoints": ["one"]}))
            error = await receive_json(ws)
            (connection,) = hub.connections.values()
            size = len(connection.included)
        assert first["type"] == "subscribed"
        assert error["code"] == "invalid_frame"
        assert error["id"] == 2
        assert str(MAX_SUBSCRIPTION_NAMES) in error["message"]
        assert size == MAX_SUBSCRIPTION_NAMES

    run(scenario())


def test_non_ascii_frame_limit_counts_bytes() -> None:
    async def scenario() -> None:
        settings = ServerSettings(max_frame_bytes=10_000)
        async with serving(settings=settings) as client, client.ws_connect("/v1/stream") as ws:
            # 6,000 more characters, 12,000 more bytes in UTF-8.
            text = columns([1.0]).removesuffix("}") + ', "note": "' + "\u00e9" * 6000 + '"}'

            await ws.send_str(text)
            error = await receive_json(ws)
        assert len(text) < 10_000
        assert error["code"] == "frame_too_large"
        assert "bytes" in error["message"]

    run(scenario())


def test_huge_integer_literal_is_invalid_json() -> None:
    async def scenario() -> None:
        async with serving() as client, client.ws_connect("/v1/stream") as ws:
            # CPython refuses to convert integer literals of more than 4,300 digits.
            text = columns([1.0], frame_id=4).replace("[1.0]", "[1" + "0" * 5000 + "]")
            await ws.send_str(text)
            error = await receive_json(ws)
            await ws.send_str(columns([1.0], frame_id=5))
            _, ack = await reply_to(ws)
        assert error["code"] == "invalid_json"
        assert error["id"] is None
        assert "4300" in error["message"]
        assert ack["accepted"] == 1

    run(scenario())


def test_unknown_type_message_is_short() -> None:
    async def scenario() -> None:
        async with serving() as client, client.ws_connect("/v1/stream") as ws:
            await ws.send_str(json.dumps({"type": "x" * 50_000, "id": 3}))
            error = await receive_json(ws)
        assert error["code"] == "unknown_type"
        assert len(error["message"]) < 200

    run(scenario())


FRAME_ERRORS = [
    pytest.param("{not json", "invalid_json", id="malformed-json"),
    pytest.param("[1, 2]", "invalid_frame", id="array-frame"),
    pytest.param('{"type": "bogus", "id": 3}', "unknown_type", id="unknown-type"),
    pytest.param(
        '{"type": "columns", "id": 3, "endpoint": "llm", "metric": "m", '
        '"instance": "i", "timestamp_s": [1], "value": [1, 2]}',
        "length_mismatch",
        id="misaligned-columns",
    ),
    pytest.param(
        '{"type": "columns", "id": 3, "endpoint": 5, "metric": "m", '
        '"instance": "i", "timestamp_s": [1], "value": [1]}',
        "invalid_frame",
        id="endpoint-number",
    ),
    pytest.param(
        '{"type": "samples", "id": 3, "samples": {}}', "invalid_frame", id="samples-object"
    ),
]


@pytest.mark.parametrize(("text", "code"), FRAME_ERRORS)
def test_unusable_frame_gets_error_and_socket_stays_open(text: str, code: str) -> None:
    async def scenario() -> None:
        async with serving() as client, client.ws_connect("/v1/stream") as ws:
            await ws.send_str(text)
            error = await receive_json(ws)
            await ws.send_str(columns([1.0], frame_id=9))
            _, ack = await reply_to(ws)
            metrics = await (await client.get("/metrics")).text()
        assert error["type"] == "error"
        assert error["code"] == code
        assert ack["id"] == 9
        assert ack["accepted"] == 1
        assert f'warmstart_frames_rejected_total{{code="{code}"}} 1' in metrics

    run(scenario())


def test_binary_frame_gets_error() -> None:
    async def scenario() -> None:
        async with serving() as client, client.ws_connect("/v1/stream") as ws:
            await ws.send_bytes(b"\x00\x01")
            error = await receive_json(ws)
            await ws.send_str(columns([1.0]))
            _, ack = await reply_to(ws)
        assert error["code"] == "binary_frame"
        assert ack["accepted"] == 1

    run(scenario())


def test_frame_over_limit_gets_error() -> None:
    async def scenario() -> None:
        settings = ServerSettings(max_frame_bytes=10_000)
        async with serving(settings=settings) as client, client.ws_connect("/v1/stream") as ws:
            await ws.send_str(columns([1.0] * 600))
            error = await receive_json(ws)
            await ws.send_str(columns([1.0] * 10))
            _, ack = await reply_to(ws)
        assert error["code"] == "frame_too_large"
        assert "10000" in error["message"]
        assert ack["accepted"] == 10

    run(scenario())


def test_frame_far_over_limit_closes_with_1009() -> None:
    async def scenario() -> None:
        settings = ServerSettings(max_frame_bytes=1000)
        async with serving(settings=settings) as client, client.ws_connect("/v1/stream") as ws:
            await ws.send_str("x" * 5000)
            message = await ws.receive(timeout=5.0)
            assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
            assert ws.close_code == 1009

    run(scenario())


def test_instance_events_change_capacity() -> None:
    async def scenario() -> None:
        engine = make_engine()
        events = [
            {"endpoint": "llm", "instance": f"pod-{i}", "event": "ready"} for i in range(3)
        ] + [{"endpoint": "gone", "instance": "x", "event": "ready"}]
        async with serving(engine) as client, client.ws_connect("/v1/stream") as ws:
            await ws.send_str(json.dumps({"type": "instance_events", "id": 2, "events": events}))
            error = await receive_json(ws)
            ack = await receive_json(ws)
        assert error["code"] == "events_rejected"
        assert 'unknown_endpoint: 1 (first endpoint "gone" is not configured)' in error["message"]
        assert ack["accepted"] == 3
        assert ack["rejected"] == {"unknown_endpoint": 1}
        assert engine.state("llm").ready == 3

    run(scenario())


def test_invalid_instance_events_rejected_one_by_one() -> None:
    async def scenario() -> None:
        engine = make_engine()
        async with serving(engine) as client, client.ws_connect("/v1/stream") as ws:
            events = [
                {"endpoint": "llm", "instance": "a", "event": "exploded"},
                {"endpoint": "llm", "instance": "b", "event": "ready"},
                {"endpoint": 5, "instance": "c", "event": "ready"},
                7,
                {"endpoint": "nope", "instance": "d", "event": "ready"},
            ]
            await ws.send_str(json.dumps({"type": "instance_events", "id": 2, "events": events}))
            error = await receive_json(ws)
            ack = await receive_json(ws)
        assert error["code"] == "events_rejected"
        assert error["id"] == 2
        message = error["message"]
        assert "rejected 4 of 5 events" in message
        assert "events[0].event must be one of" in message
        assert '"exploded"' in message
        assert InstanceEvent.READY.value in message
        assert "events[2].endpoint must be a non-empty string, got 5" in message
        assert 'endpoint "nope" is not configured' in message
        assert ack["type"] == "ack"
        assert ack["accepted"] == 1
        assert ack["rejected"] == {"invalid_event": 2, "invalid_name": 1, "unknown_endpoint": 1}
        assert engine.state("llm").ready == 1

    run(scenario())


def test_subscriber_on_other_socket_gets_decisions() -> None:
    async def scenario() -> None:
        engine = make_engine("llm", "other")
        async with (
            serving(engine) as client,
            client.ws_connect("/v1/stream") as feeder,
            client.ws_connect("/v1/stream") as watcher,
        ):
            await watcher.send_str(json.dumps({"type": "subscribe", "id": 1, "endpoints": ["llm"]}))
            reply = await receive_json(watcher)
            await feeder.send_str(columns([45.0] * 10))
            await reply_to(feeder)
            await feeder.send_str(columns([45.0] * 10, endpoint="other"))
            await reply_to(feeder)
            engine.evaluate()
            decision = await receive_json(watcher)
            with pytest.raises(asyncio.TimeoutError):
                await watcher.receive(timeout=0.3)
            history = await (await client.get("/v1/endpoints/llm/decisions?since=0")).json()
        assert reply == {
            "type": "subscribed",
            "id": 1,
            "all": False,
            "endpoints": ["llm"],
            "excluded": [],
        }
        assert decision["type"] == "decision"
        assert decision["endpoint"] == "llm"
        assert decision["desired"] == 5
        assert next(s["name"] for s in decision["stages"]) == "raw"
        assert [d["seq"] for d in history["decisions"]] == [decision["seq"]]

    run(scenario())


def test_subscribe_all_on_same_socket() -> None:
    async def scenario() -> None:
        engine = make_engine("llm", "other")
        async with serving(engine) as client, client.ws_connect("/v1/stream") as ws:
            await ws.send_str(json.dumps({"type": "subscribe", "id": 1}))
            await receive_json(ws)
            await ws.send_str(columns([45.0] * 10))
            await reply_to(ws)
            await ws.send_str(columns([95.0] * 10, endpoint="other"))
            await reply_to(ws)
            engine.evaluate()
            first = await receive_json(ws)
            second = await receive_json(ws)
        assert {first["endpoint"], second["endpoint"]} == {"llm", "other"}

    run(scenario())


def fake_decision(index: int, padding: int) -> Decision:
    return Decision("llm", float(index), 1, 2, None, "x" * padding, (), ())


def test_slow_subscriber_blocks_nobody() -> None:
    async def scenario() -> None:
        engine = make_engine()
        settings = ServerSettings(subscriber_queue=16)
        async with serving(engine, settings=settings) as client:
            hub = client.app[HUB]  # type: ignore[index]
            async with (
                client.ws_connect("/v1/stream") as slow,
                client.ws_connect("/v1/stream") as fast,
                client.ws_connect("/v1/stream") as feeder,
            ):
                for ws in (slow, fast):
                    await ws.send_str(json.dumps({"type": "subscribe", "id": 1}))
                    await receive_json(ws)
                total = 2000
                received = 0
                # 2,000 decisions of 20 kB each, 40 MB, is more than loopback socket buffers
                # hold, so the slow subscriber's writer blocks while the others go on.
                for index in range(total):
                    hub.on_decision(fake_decision(index, 20_000))
                    if index % 50 == 0:
                        await feeder.send_str(columns([1.0] * 10, frame_id=index))
                        _, ack = await reply_to(feeder)
                        assert ack["accepted"] == 10
                    while True:
                        try:
                            message = await fast.receive(timeout=0.001 if index < total - 1 else 5)
                        except TimeoutError:
                            break
                        frame = json.loads(message.data)
                        assert frame["type"] == "decision"
                        received += 1
                        if received == total:
                            break
                while received < total:
                    await receive_json(fast)
                    received += 1
                dropped = hub.counters.decisions_dropped
                first = await receive_json(slow)
        assert received == total
        assert dropped > 0
        assert first["type"] in ("decision", "decisions_dropped")

    run(scenario())


def test_hundred_concurrent_clients() -> None:
    async def scenario() -> None:
        engine = make_engine()
        async with serving(engine) as client:

            async def one(number: int) -> int:
                accepted = 0
                async with client.ws_connect("/v1/stream") as ws:
                    for batch in range(10):
                        now = time.time()
                        await ws.send_str(
                            json.dumps(
                                {
                                    "type": "columns",
                                    "id": batch,
                                    "endpoint": "llm",
                                    "metric": "concurrency",
                                    "instance": f"pod-{number}",
                                    "timestamp_s": [now] * 100,
                                    "value": [1.0] * 100,
                                }
                            )
                        )
                        _, ack = await reply_to(ws)
                        accepted += ack["accepted"]
                    finished.append(number)
                    if len(finished) == 100:
                        all_finished.set()
                    await release.wait()
                return accepted

            finished: list[int] = []
            all_finished = asyncio.Event()
            release = asyncio.Event()
            tasks = [asyncio.create_task(one(n)) for n in range(100)]
            await asyncio.wait_for(all_finished.wait(), 60)
            # The test client's session allows 100 connections, all held by the websockets.
            async with aiohttp.ClientSession() as other:
                response = await other.get(client.make_url("/metrics"))
                metrics = await response.text()
            release.set()
            results = await asyncio.gather(*tasks)
        assert sum(results) == 100_000
        assert "warmstart_connected_clients 100" in metrics
        assert "warmstart_samples_accepted_total 100000" in metrics
        assert engine.series_count == 100

    run(scenario())


def test_full_ingest_queue_slows_client() -> None:
    async def scenario() -> None:
        settings = ServerSettings(ingest_queue_batches=1, max_unanswered_frames=64)
        async with serving(settings=settings) as client, client.ws_connect("/v1/stream") as ws:
            hub = client.app[HUB]  # type: ignore[index]
            for frame_id in range(60):
                await ws.send_str(columns([1.0] * 1000, frame_id=frame_id))
            acks = []
            slow_downs = 0
            while len(acks) < 60:
                frame = await receive_json(ws)
                if frame["type"] == "slow_down":
                    slow_downs += 1
                elif frame["type"] == "ack":
                    acks.append(frame)
        assert slow_downs >= 1
        assert hub.counters.ingest_waits >= 1
        assert sum(a["accepted"] for a in acks) == 60_000

    run(scenario())

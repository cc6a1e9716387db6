"""MetricStream against a real server on loopback: delivery, rejects, drops, reconnect."""

from __future__ import annotations

import asyncio
import socket
import time
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from warmstart.client import BUFFER_FULL, NOT_SENT_BEFORE_CLOSE, MetricStream
from warmstart.engine import InstanceEvent
from warmstart.server import make_app

from ..server.helpers import make_engine, serving


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_stream_delivers_every_sample() -> None:
    async def scenario() -> None:
        engine = make_engine()
        async with serving(engine) as client:
            url = str(client.make_url("/v1/stream"))
            async with MetricStream(url, batch_size=1000) as stream:
                for index in range(5500):
                    stream.add("llm", "concurrency", f"pod-{index % 5}", time.time(), 3.0)
                stream.instance_event("llm", "pod-0", InstanceEvent.READY)
                assert await stream.flush(timeout_s=10)
            stats = stream.stats
        assert stats.accepted == 5500
        assert not stats.rejected
        assert not stats.dropped
        assert stats.batches_sent == 6
        assert stats.events_accepted == 1
        assert engine.state("llm").ready == 1

    asyncio.run(scenario())


def test_stream_reports_rejected_samples() -> None:
    async def scenario() -> None:
        async with serving() as client:
            url = str(client.make_url("/v1/stream"))
            async with MetricStream(url) as stream:
                stream.add("llm", "concurrency", "a", time.time(), float("nan"))
                stream.add("nope", "concurrency", "a", time.time(), 1.0)
                stream.add("llm", "concurrency", "a", time.time(), 1.0)
            stats = stream.stats
        assert stats.accepted == 1
        assert stats.rejected == {"nan_value": 1, "unknown_endpoint": 1}

    asyncio.run(scenario())


def test_stream_reports_drops_without_server() -> None:
    drops: list[tuple[str, int]] = []

    async def scenario() -> MetricStream:
        url = f"ws://127.0.0.1:{free_port()}/v1/stream"
        async with MetricStream(
            url, max_buffered=10, close_timeout_s=0.2, on_drop=lambda r, n: drops.append((r, n))
        ) as stream:
            for _ in range(15):
                stream.add("llm", "concurrency", "a", time.time(), 1.0)
        return stream

    stream = asyncio.run(scenario())
    assert stream.stats.dropped == {BUFFER_FULL: 5, NOT_SENT_BEFORE_CLOSE: 10}
    assert (NOT_SENT_BEFORE_CLOSE, 10) in drops
    assert stream.stats.accepted == 0


def test_stream_reconnects_and_resends() -> None:
    async def scenario() -> None:
        port = free_port()
        engine = make_engine()
        first = TestServer(make_app(engine, start_engine=False), host="127.0.0.1", port=port)
        await first.start_server()
        url = f"ws://127.0.0.1:{port}/v1/stream"
        try:
            async with MetricStream(url, backoff_initial_s=0.05, backoff_max_s=0.2) as stream:
                await asyncio.wait_for(stream.connected.wait(), 5)
                for _ in range(100):
                    stream.add("llm", "concurrency", "a", time.time(), 1.0)
                assert await stream.flush(timeout_s=5)
                await first.close()
                for _ in range(200):
                    stream.add("llm", "concurrency", "a", time.time(), 1.0)
                await asyncio.sleep(0.3)
                second_engine = make_engine()
                second = TestServer(
                    make_app(second_engine, start_engine=False), host="127.0.0.1", port=port
                )
                await second.start_server()
                try:
                    assert await stream.flush(timeout_s=10)
                finally:
                    await second.close()
                    await second_engine.stop()
            stats = stream.stats
        finally:
            await first.close()
            await engine.stop()
        assert stats.accepted == 300
        assert stats.reconnects >= 1
        assert not stats.dropped

    asyncio.run(scenario())


def test_stream_sends_numpy_numbers() -> None:
    async def scenario() -> None:
        async with serving() as client:
            url = str(client.make_url("/v1/stream"))
            async with MetricStream(url) as stream:
                stream.add("llm", "concurrency", "a", np.float64(time.time()), np.int64(7))
                stream.add("llm", "concurrency", "a", time.time(), np.float32(2.5))
                assert await stream.flush(timeout_s=10)
            stats = stream.stats
        assert stats.accepted == 2
        assert not stats.dropped

    asyncio.run(scenario())


BAD_SAMPLES = [
    pytest.param(("llm", "concurrency", "a", 1.0, Decimal("1.5")), TypeError, id="decimal"),
    pytest.param(("llm", "concurrency", "a", 1.0, "7"), TypeError, id="string-value"),
    pytest.param(("llm", "concurrency", "a", "now", 1.0), TypeError, id="string-time"),
    pytest.param(("llm", "concurrency", 3, 1.0, 1.0), TypeError, id="number-instance"),
    pytest.param(("llm", "concurrency", "a", 1.0, 10**400), ValueError, id="huge-integer"),
]


@pytest.mark.parametrize(("sample", "error"), BAD_SAMPLES)
def test_stream_add_rejects_bad_sample(sample: tuple[Any, ...], error: type[Exception]) -> None:
    async def scenario() -> None:
        async with serving() as client:
            url = str(client.make_url("/v1/stream"))
            async with MetricStream(url) as stream:
                with pytest.raises(error):
                    stream.add(*sample)
                # The stream still delivers the samples that follow.
                stream.add("llm", "concurrency", "a", time.time(), 1.0)
                assert await stream.flush(timeout_s=10)
            stats = stream.stats
        assert stats.accepted == 1
        assert not stats.dropped

    asyncio.run(scenario())

"""Generated frames, valid and invalid, never crash the server or lose valid samples."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import make_engine, reply_to

GOOD_VALUES = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
BAD_VALUES = st.one_of(
    st.just(float("nan")),
    st.just(float("inf")),
    st.floats(max_value=-0.001, min_value=-1e6),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
    st.integers(min_value=10**309, max_value=10**310),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def sample_rows(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """Return one sample of the list form and whether the server must accept it."""
    good = draw(st.booleans())
    sample: dict[str, Any] = {
        "endpoint": "llm",
        "metric": "concurrency",
        "instance": draw(st.sampled_from(["a", "b", "c"])),
        "timestamp_s": time.time(),
        "value": draw(GOOD_VALUES),
    }
    if good:
        return sample, True
    flaw = draw(st.sampled_from(["value", "endpoint", "metric", "missing", "timestamp"]))
    if flaw == "value":
        sample["value"] = draw(BAD_VALUES)
    elif flaw == "endpoint":
        sample["endpoint"] = draw(st.one_of(st.just("unknown"), st.integers(), st.just("")))
    elif flaw == "metric":
        sample["metric"] = "unknown"
    elif flaw == "missing":
        del sample[draw(st.sampled_from(sorted(sample)))]
    else:
        sample["timestamp_s"] = draw(st.one_of(st.text(max_size=2), st.just(float("nan"))))
    return sample, False


JUNK = st.one_of(
    st.text(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=5),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(["type", "id", "samples", "value", "x"]), children, max_size=4
            )
        ),
        max_leaves=12,
    ).map(json.dumps),
)


class ServerThread:
    """A server on 127.0.0.1 in its own thread and event loop."""

    def __init__(self) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.engine = make_engine()

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        from warmstart.server import make_app

        self._stop = asyncio.Event()
        runner = web.AppRunner(make_app(self.engine, start_engine=False))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await self.engine.stop()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10), "server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread() as running:
        yield running


def exchange(port: int, frames: list[str]) -> list[tuple[dict[str, Any] | None, dict[str, Any]]]:
    async def scenario() -> list[tuple[dict[str, Any] | None, dict[str, Any]]]:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{port}/v1/stream") as ws,
        ):
            replies = []
            for frame in frames:
                await ws.send_str(frame)
                replies.append(await reply_to(ws))
            return replies

    return asyncio.run(scenario())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(sample_rows(), max_size=30))
def test_valid_samples_of_mixed_batch_accepted(server: ServerThread, rows: list[Any]) -> None:
    frame = json.dumps({"type": "samples", "id": 1, "samples": [s for s, _ in rows]})
    error, ack = exchange(server.port, [frame])[0]
    expected = sum(1 for _, good in rows if good)
    assert ack["type"] == "ack"
    assert ack["accepted"] == expected
    assert sum(ack["rejected"].values()) == len(rows) - expected
    assert (error is not None) == (expected < len(rows))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=JUNK)
def test_junk_frame_answered_and_socket_kept(server: ServerThread, junk: str) -> None:
    now = time.time()
    probe = json.dumps(
        {
            "type": "columns",
            "id": "probe",
            "endpoint": "llm",
            "metric": "concurrency",
            "instance": "p",
            "timestamp_s": [now],
            "value": [1.0],
        }
    )
    replies = exchange(server.port, [junk, probe])
    assert replies[0][1]["type"] in ("ack", "error", "subscribed")
    assert replies[1][1] == {"type": "ack", "id": "probe", "accepted": 1, "rejected": {}}

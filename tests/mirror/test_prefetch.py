"""Prefetch: into a store, through a running mirror, and on an engine scale-up."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.engine.helpers import DIRECT, feed, tracking_spec
from tests.mirror.conftest import Registry, make_image, push, tree_digests
from tests.mirror.helpers import copy_from_mirror, get, running
from warmstart import (
    Decision,
    EndpointSpec,
    Engine,
    EngineConfigError,
    FakeClock,
    LayerStore,
    MetricSpec,
    Predictive,
)
from warmstart.mirror import ImagePrefetcher, Mirror, Upstream, prefetch
from warmstart.mirror.prefetch import registry_of


def test_registry_of_reference() -> None:
    assert registry_of("ubuntu") == "docker.io"
    assert registry_of("library/ubuntu:22.04") == "docker.io"
    assert registry_of("localhost/app:v1") == "localhost"
    assert registry_of("127.0.0.1:5000/team/app@sha256:" + "0" * 64) == "127.0.0.1:5000"
    assert registry_of("index.docker.io/library/ubuntu") == "docker.io"


def test_prefetch_reports_each_image(store: LayerStore, registry: Registry, tmp_path: Path) -> None:
    digest = make_image(tmp_path / "source", "v1", [50_000])
    push(tmp_path / "source", "v1", registry, "team/app")
    references = [f"{registry.host}/team/app:v1", f"{registry.host}/team/app:missing"]

    results = asyncio.run(prefetch(store, references))

    assert not isinstance(results[0], BaseException)
    assert results[0].manifest_digest == digest
    assert isinstance(results[1], LookupError)
    assert store.resolve(references[0]).digest == digest


def test_prefetch_endpoint_lets_mirror_serve_offline(
    store: LayerStore, registry: Registry, tmp_path: Path
) -> None:
    make_image(tmp_path / "source", "v1", [400_000, 2000])
    push(tmp_path / "source", "v1", registry, "team/app")
    mirror = Mirror(store, upstreams=[Upstream(registry.host)])

    async def body() -> None:
        async with running(mirror) as server:
            references = {"references": [f"{registry.host}/team/app:v1"]}
            status, _, content = await get(server, "/_warmstart/prefetch", "POST", json=references)
            assert status == 200, content
            assert json.loads(content)["images"][0]["bytes_fetched"] > 400_000
            os.kill(registry.process.pid, signal.SIGKILL)
            registry.process.wait()
            await copy_from_mirror(server, "team/app:v1", f"oci:{tmp_path / 'copied'}:v1")

    asyncio.run(body())
    assert tree_digests(tmp_path / "copied" / "blobs") == tree_digests(
        tmp_path / "source" / "blobs"
    )


def test_prefetch_endpoint_rejects_other_registry(store: LayerStore, registry: Registry) -> None:
    mirror = Mirror(store, upstreams=[Upstream(registry.host)])

    async def body() -> None:
        async with running(mirror) as server:
            request = {"references": ["example.com/team/app:v1"]}
            status, _, _ = await get(server, "/_warmstart/prefetch", "POST", json=request)
            assert status == 400
            status, _, _ = await get(server, "/_warmstart/prefetch", "POST", data=b"{")
            assert status == 400
            # Nesting deeper than the JSON parser's recursion limit is malformed JSON too.
            nested = b"[" * 100_000
            status, _, content = await get(server, "/_warmstart/prefetch", "POST", data=nested)
            assert status == 400
            assert b"invalid JSON body" in content

    asyncio.run(body())


def test_engine_scale_up_starts_prefetch() -> None:
    pulled: list[list[str]] = []

    async def pull(references: Sequence[str]) -> None:
        pulled.append(list(references))

    async def body() -> None:
        prefetcher = ImagePrefetcher({"llm": ["registry.example/llm:v1"]}, pull)
        clock = FakeClock(1000.0)
        engine = Engine([tracking_spec(initial_capacity=1)], clock=clock)
        engine.add_callback(prefetcher)
        decisions = feed(engine, clock, 30.0, 5)
        await prefetcher.wait()
        assert [d.direction for d in decisions if d.changed] == ["up"]
        assert prefetcher.started == 1
        await prefetcher.close()

    asyncio.run(body())
    assert pulled == [["registry.example/llm:v1"]]


def test_scale_down_does_not_prefetch() -> None:
    pulled: list[list[str]] = []

    async def pull(references: Sequence[str]) -> None:
        pulled.append(list(references))

    async def body() -> None:
        prefetcher = ImagePrefetcher({"llm": ["registry.example/llm:v1"]}, pull)
        clock = FakeClock(1000.0)
        engine = Engine([tracking_spec(initial_capacity=8)], clock=clock)
        engine.add_callback(prefetcher)
        decisions = feed(engine, clock, 10.0, 5)
        await prefetcher.wait()
        assert any(d.direction == "down" for d in decisions)

    asyncio.run(body())
    assert pulled == []


def ramp_spec(initial_capacity: int) -> EndpointSpec:
    """An endpoint sized only by a forecast of ``rps`` at 10 requests per second per instance."""
    return EndpointSpec(
        "llm",
        (MetricSpec("rps", stale_after_s=30.0, per_instance=False),),
        (Predictive("rps", target=10.0, step_s=10.0, trend_window_s=300.0),),
        min_capacity=1,
        max_capacity=100,
        behavior=DIRECT,
        initial_capacity=initial_capacity,
    )


def ramp(engine: Engine, clock: FakeClock, seconds: int, slope: float) -> list[Decision]:
    decisions = []
    for _ in range(seconds):
        load = max(1.0, slope * (clock.now() - 1000.0))
        engine.ingest("llm", "rps", "lb", clock.now(), load)
        decisions.extend(engine.tick())
        clock.advance(1.0)
    return decisions


def test_forecast_above_capacity_calls_prefetch_hook_once() -> None:
    pulled: list[list[str]] = []

    async def pull(references: Sequence[str]) -> None:
        pulled.append(list(references))

    async def body() -> list[Decision]:
        prefetcher = ImagePrefetcher({"llm": ["registry.example/llm:v1"]}, pull)
        clock = FakeClock(1000.0)
        seen: list[Decision] = []
        engine = Engine([ramp_spec(1)], clock=clock, prefetch=prefetcher, on_decision=seen.append)
        decisions = ramp(engine, clock, 200, slope=1.0)
        await prefetcher.wait()
        assert [d for d in seen if d.prefetch] == [d for d in decisions if d.prefetch]
        return decisions

    decisions = asyncio.run(body())
    marked = [d for d in decisions if d.prefetch]
    assert len(marked) == 1
    assert "prefetch started" in marked[0].explain()
    first_up = next(d for d in decisions if d.direction == "up")
    assert marked[0].at <= first_up.at
    assert pulled == [["registry.example/llm:v1"]]


def test_flat_load_never_prefetches() -> None:
    calls: list[Decision] = []
    clock = FakeClock(1000.0)
    engine = Engine([ramp_spec(5)], clock=clock, prefetch=calls.append)
    decisions = ramp(engine, clock, 200, slope=0.0)
    assert not any(d.prefetch for d in decisions)
    assert calls == []


def test_failing_prefetch_hook_does_not_stop_engine() -> None:
    def broken(decision: Decision) -> None:
        raise RuntimeError("hook failed")

    clock = FakeClock(1000.0)
    engine = Engine([ramp_spec(1)], clock=clock, prefetch=broken)
    decisions = ramp(engine, clock, 200, slope=1.0)
    assert any(d.prefetch for d in decisions)
    assert any(d.direction == "up" for d in decisions)


def test_prefetch_repeats_after_interval() -> None:
    calls: list[Decision] = []
    clock = FakeClock(1000.0)
    engine = Engine([ramp_spec(1)], clock=clock, prefetch=calls.append, prefetch_interval_s=60.0)
    ramp(engine, clock, 200, slope=1.0)
    assert len(calls) >= 2
    for earlier, later in itertools.pairwise(calls):
        assert later.at - earlier.at >= 60.0


def first_prefetch_at(lead_s: float) -> float:
    calls: list[Decision] = []
    clock = FakeClock(1000.0)
    engine = Engine([ramp_spec(30)], clock=clock, prefetch=calls.append, prefetch_lead_s=lead_s)
    ramp(engine, clock, 300, slope=1.0)
    assert calls, f"no prefetch with a lead of {lead_s} s"
    return calls[0].at


def test_prefetch_lead_fires_before_the_scale_out_forecast() -> None:
    # Capacity 30 at 10 rps each covers 300 rps: the default 120 s horizon reaches that load
    # about 180 s into the ramp, a 300 s lead about 120 s earlier.
    without_lead = first_prefetch_at(0.0)
    with_lead = first_prefetch_at(300.0)
    assert with_lead < without_lead - 60.0


def test_prefetch_lead_must_be_finite_seconds() -> None:
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(EngineConfigError, match="prefetch_lead_s"):
            Engine([ramp_spec(1)], prefetch=lambda decision: None, prefetch_lead_s=bad)

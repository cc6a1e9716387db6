"""Prefetch: into a store, through a running mirror, and on an engine scale-up."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from tests.engine.helpers import feed, tracking_spec
from tests.mirror.conftest import Registry, make_image, push, tree_digests
from tests.mirror.helpers import copy_from_mirror, get, running
from warmstart import Engine, FakeClock, LayerStore
from warmstart.mirror import Mirror, ScaleUpPrefetcher, Upstream, prefetch
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

    asyncio.run(body())


def test_engine_scale_up_starts_prefetch() -> None:
    pulled: list[list[str]] = []

    async def pull(references: Sequence[str]) -> None:
        pulled.append(list(references))

    async def body() -> None:
        prefetcher = ScaleUpPrefetcher({"llm": ["registry.example/llm:v1"]}, pull)
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
        prefetcher = ScaleUpPrefetcher({"llm": ["registry.example/llm:v1"]}, pull)
        clock = FakeClock(1000.0)
        engine = Engine([tracking_spec(initial_capacity=8)], clock=clock)
        engine.add_callback(prefetcher)
        decisions = feed(engine, clock, 10.0, 5)
        await prefetcher.wait()
        assert any(d.direction == "down" for d in decisions)

    asyncio.run(body())
    assert pulled == []

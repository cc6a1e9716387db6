"""Benchmarks of `warmstart serve` on loopback: ingest rate, decision latency, memory.

The server runs in a child process (`python -m warmstart serve`) on 127.0.0.1 and this
process is the client; every phase is bounded in time and the server is stopped with SIGTERM.

    python benchmarks/serve_bench.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

CONFIG = """
[server]
max_frame_bytes = 4194304

[endpoints.llm]
min_capacity = 1
max_capacity = 10000
interval_s = 1.0

[[endpoints.llm.metrics]]
name = "concurrency"

[[endpoints.llm.policies]]
type = "target_tracking"
metric = "concurrency"
target = 10
window_s = 2

[endpoints.llm.behavior]
tolerance = 0.0
restart_hold_s = 0
[endpoints.llm.behavior.scale_up]
policies = []
[endpoints.llm.behavior.scale_down]
stabilization_window_s = 0
policies = []
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def batch_frame(frame_id: int, instance: str, size: int, value: float = 5.0) -> str:
    now = time.time()
    return json.dumps(
        {
            "type": "columns",
            "id": frame_id,
            "endpoint": "llm",
            "metric": "concurrency",
            "instance": instance,
            "timestamp_s": [now] * size,
            "value": [value] * size,
        }
    )


async def pump(
    session: aiohttp.ClientSession,
    url: str,
    instance: str,
    seconds: float,
    window: int = 8,
    size: int = 1000,
) -> int:
    """Send batches with at most ``window`` unacknowledged for ``seconds``; return accepted."""
    accepted = 0
    frame = batch_frame(0, instance, size)
    async with session.ws_connect(url, max_msg_size=0) as ws:
        deadline = time.monotonic() + seconds
        in_flight = 0
        while time.monotonic() < deadline or in_flight:
            while in_flight < window and time.monotonic() < deadline:
                await ws.send_str(frame)
                in_flight += 1
            reply = json.loads((await ws.receive(timeout=30)).data)
            if reply["type"] == "ack":
                accepted += reply["accepted"]
                in_flight -= 1
    return accepted


async def ingest(url: str, connections: int, seconds: float) -> float:
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        results = await asyncio.gather(
            *(pump(session, url, f"pod-{c}", seconds) for c in range(connections))
        )
        return sum(results) / (time.monotonic() - started)


async def latency(url: str, samples: int) -> tuple[list[float], list[float]]:
    """Send load steps and time the decisions; return send-to-decision and after-tick ms."""
    totals, beyond = [], []
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url) as feeder,
        session.ws_connect(url) as watcher,
    ):
        await watcher.send_str(json.dumps({"type": "subscribe", "endpoints": ["llm"]}))
        await watcher.receive()
        load = 10.0
        for index in range(samples):
            load = 200.0 if load == 10.0 else 10.0
            sent = time.time()
            await feeder.send_str(batch_frame(index, "pod-0", 1, load))
            while True:
                frame = json.loads((await watcher.receive(timeout=10)).data)
                if frame["type"] == "decision" and frame["desired"] == int(load / 10):
                    break
            received = time.time()
            totals.append((received - sent) * 1000)
            beyond.append((received - frame["at"]) * 1000)
            await feeder.receive(timeout=10)  # the ack
            await asyncio.sleep(2.1)  # let the 2 s window forget the previous step
    return totals, beyond


async def idle_clients(url: str, count: int, pid: int, seconds: float) -> tuple[float, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = [await session.ws_connect(url) for _ in range(count)]
        await asyncio.sleep(1.0)
        idle = rss_mib(pid)
        peak = idle

        async def sample() -> None:
            nonlocal peak
            while True:
                await asyncio.sleep(0.2)
                peak = max(peak, rss_mib(pid))

        sampler = asyncio.create_task(sample())
        try:
            await asyncio.gather(
                *(pump(session, url, f"pod-{c}", seconds, window=2, size=500) for c in range(count))
            )
        finally:
            sampler.cancel()
        for ws in sockets:
            await ws.close()
        return idle, peak


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each ingest phase")
    parser.add_argument("--latency-samples", type=int, default=20)
    arguments = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "serve.toml"
        config.write_text(CONFIG)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "warmstart",
                "serve",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()
            url = f"http://127.0.0.1:{port}/v1/stream"
            start_rss = rss_mib(server.pid)
            totals, beyond = asyncio.run(latency(url, arguments.latency_samples))
            print(
                f"send to decision at a 1 s tick ({len(totals)} steps): "
                f"p50 {percentile(totals, 0.5):.1f} ms, p99 {percentile(totals, 0.99):.1f} ms; "
                f"after the tick: p50 {percentile(beyond, 0.5):.1f} ms, "
                f"p99 {percentile(beyond, 0.99):.1f} ms"
            )
            one = asyncio.run(ingest(url, 1, arguments.seconds))
            print(f"ingest, 1 connection, batches of 1,000: {one:,.0f} samples/s")
            sixteen = asyncio.run(ingest(url, 16, arguments.seconds))
            print(f"ingest, 16 connections, batches of 1,000: {sixteen:,.0f} samples/s total")
            idle, peak = asyncio.run(idle_clients(url, 100, server.pid, arguments.seconds))
            print(
                f"server RSS: {start_rss:.0f} MiB at start, {idle:.0f} MiB with 100 idle "
                f"clients, {peak:.0f} MiB peak with 100 clients sending"
            )
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            print(f"server exit status {server.returncode}")


if __name__ == "__main__":
    main()

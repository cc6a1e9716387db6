"""Benchmark sample ingestion: numpy batches, name columns and one sample at a time.

Run: PYTHONPATH=python python benchmarks/engine_ingest.py
"""

from __future__ import annotations

import time

import numpy as np

from engine_common import header, make_engine
from warmstart.engine import FakeClock

ENDPOINTS = 1000
INSTANCES = 10
BATCH = 10_000


def main() -> None:
    header("engine ingest")
    clock = FakeClock(1_000_000.0)
    engine = make_engine(ENDPOINTS, clock)
    ids = np.array(
        [
            engine.series_id(f"e{e}", "concurrency", f"i{i}")
            for e in range(ENDPOINTS)
            for i in range(INSTANCES)
        ]
    )
    rng = np.random.default_rng(0)

    batches = 200
    samples = [
        (rng.choice(ids, BATCH), rng.uniform(-2.0, 0.0, BATCH), rng.uniform(0, 50, BATCH))
        for _ in range(batches)
    ]
    started = time.perf_counter()
    for sids, offsets, values in samples:
        engine.ingest_batch(sids, clock.now() + offsets, values)
        clock.advance(0.005)
    elapsed = time.perf_counter() - started
    rate = batches * BATCH / elapsed
    print(f"batch ingest ({BATCH} samples per batch, series ids): {rate / 1e6:.2f} M samples/s")

    names_e = np.array([f"e{e}" for e in range(ENDPOINTS) for _ in range(INSTANCES)])
    names_i = np.array([f"i{i}" for _ in range(ENDPOINTS) for i in range(INSTANCES)])
    batches = 20
    picks = [rng.integers(0, ids.size, BATCH) for _ in range(batches)]
    started = time.perf_counter()
    for pick in picks:
        engine.ingest_columns(
            names_e[pick],
            "concurrency",
            names_i[pick],
            np.full(BATCH, clock.now()),
            rng.uniform(0, 50, BATCH),
        )
        clock.advance(0.005)
    elapsed = time.perf_counter() - started
    rate = batches * BATCH / elapsed
    print(f"batch ingest ({BATCH} samples per batch, name columns): {rate / 1e6:.2f} M samples/s")

    count = 500_000
    endpoints = [f"e{e}" for e in rng.integers(0, ENDPOINTS, count)]
    instances = [f"i{i}" for i in rng.integers(0, INSTANCES, count)]
    values = rng.uniform(0, 50, count).tolist()
    now = clock.now()
    ingest = engine.ingest
    started = time.perf_counter()
    for endpoint, instance, value in zip(endpoints, instances, values, strict=True):
        ingest(endpoint, "concurrency", instance, now, value)
    engine.flush()
    elapsed = time.perf_counter() - started
    print(f"one-at-a-time ingest: {count / elapsed / 1e3:.0f} k samples/s")
    print(f"rejected: {engine.rejects.total}")


if __name__ == "__main__":
    main()

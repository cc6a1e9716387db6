"""Benchmark one decision pass over many endpoints.

Run: PYTHONPATH=python python benchmarks/engine_decide.py

Each pass is timed by wall clock and by this process's CPU time; on a machine shared with
other work, the CPU time varies less.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from engine_common import header, make_engine
from warmstart.engine import FakeClock

ENDPOINTS = 1000
INSTANCES = 10


def main() -> None:
    header("engine decision pass")
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
    steady = rng.uniform(0, 50, ids.size)
    for label, loads in (
        ("new random load every pass, most endpoints change", lambda: rng.uniform(0, 50, ids.size)),
        ("steady load, capacity settled", lambda: steady),
    ):
        timings = []
        cpu_timings = []
        for _ in range(70):
            engine.ingest_batch(ids, np.full(ids.size, clock.now()), loads())
            started = time.perf_counter()
            cpu_started = time.process_time()
            decisions = engine.tick()
            cpu_timings.append(time.process_time() - cpu_started)
            timings.append(time.perf_counter() - started)
            assert len(decisions) == ENDPOINTS
            clock.advance(1.0)
        settled = timings[10:]
        cpu_settled = cpu_timings[10:]
        print(
            f"decision pass over {ENDPOINTS} endpoints x {INSTANCES} instances, 60 s windows, "
            f"{label}: median {statistics.median(settled) * 1e3:.1f} ms, "
            f"max {max(settled) * 1e3:.1f} ms, "
            f"median CPU time {statistics.median(cpu_settled) * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()

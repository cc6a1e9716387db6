"""Measure engine state for many series with the default 60 s window of 1 s buckets.

Run: PYTHONPATH=python python benchmarks/engine_memory.py
"""

from __future__ import annotations

import resource
import tracemalloc

from engine_common import header, make_engine
from warmstart.engine import FakeClock

SERIES = 100_000
ENDPOINTS = 1000


def main() -> None:
    header("engine memory")
    clock = FakeClock(1_000_000.0)
    tracemalloc.start()
    engine = make_engine(ENDPOINTS, clock)
    per_endpoint = SERIES // ENDPOINTS
    for e in range(ENDPOINTS):
        for i in range(per_endpoint):
            engine.series_id(f"e{e}", "concurrency", f"instance-{i}")
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    arrays = engine.state_nbytes
    print(f"series: {engine.series_count}")
    print(
        f"numpy window and series arrays: {arrays / 2**20:.1f} MiB ({arrays / SERIES:.0f} B/series)"
    )
    print(
        f"all Python allocations (arrays, keys, endpoint state): {current / 2**20:.1f} MiB "
        f"({current / SERIES:.0f} B/series)"
    )
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak RSS of this process: {peak_rss / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()

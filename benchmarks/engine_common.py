"""Shared setup for the engine benchmarks: many endpoints tracking one metric each."""

from __future__ import annotations

import platform
import sys

from warmstart.engine import EndpointSpec, Engine, FakeClock, MetricSpec, TargetTracking


def make_engine(endpoints: int, clock: FakeClock) -> Engine:
    """Return an engine with ``endpoints`` endpoints, each tracking concurrency over 60 s."""
    specs = [
        EndpointSpec(
            f"e{index}",
            (MetricSpec("concurrency"),),
            (TargetTracking("concurrency", 10.0, window_s=60.0),),
            max_capacity=1000,
        )
        for index in range(endpoints)
    ]
    return Engine(specs, clock=clock)


def header(title: str) -> None:
    """Print the benchmark title, the command and the interpreter."""
    print(f"# {title}")
    print(f"command: {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(f"python {platform.python_version()} on {platform.machine()}")

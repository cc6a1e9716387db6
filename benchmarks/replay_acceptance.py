"""Time the acceptance replay: 5 policies x 4 cache modes over the Azure conversation trace.

Runs the 20 runs twice (with 2 worker processes, then with 1) and checks that both give the
same numbers, then prints the wall time of each and the table. Reads the trace from
``$WARMSTART_SHARED_DATA/traces`` (default ``../shared/data``).

    python benchmarks/replay_acceptance.py [--profile NAME] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from warmstart.cli.output import print_table
from warmstart.replay import ReplayPlan, load_profile, load_trace, run_plan, summarize
from warmstart.replay.report import TABLE_HEADERS, report_json, table_rows

REPOSITORY = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("WARMSTART_SHARED_DATA", REPOSITORY.parent / "shared" / "data"))
TRACE = SHARED / "traces" / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="lmi-qwen3-8b-g6")
    parser.add_argument("--jobs", type=int, default=2)
    arguments = parser.parse_args()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")

    started = time.perf_counter()
    workload = load_trace(TRACE)
    profile = load_profile(arguments.profile)
    plan = ReplayPlan(workload, profile)
    results = run_plan(plan, jobs=arguments.jobs)
    parallel_s = time.perf_counter() - started

    started = time.perf_counter()
    again = run_plan(plan, jobs=1)
    serial_s = time.perf_counter() - started

    first = report_json(results, workload, profile, plan.seed)
    second = report_json(again, workload, profile, plan.seed)
    same = json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    print(
        f"{len(results)} runs of {workload.requests} requests: {parallel_s:.1f} s with "
        f"{arguments.jobs} processes (load and plan included), {serial_s:.1f} s in one; "
        f"identical results: {same}"
    )
    print_table(TABLE_HEADERS, table_rows([summarize(r) for r in results]))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

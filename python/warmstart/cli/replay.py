"""``warmstart replay``: replay traffic through the engine against a simulated fleet."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import TextIO

from warmstart.cli.output import print_json, print_table
from warmstart.cli.pull import parse_count
from warmstart.cli.usage import UsageError, parse_path
from warmstart.replay.fleet import FleetOptions
from warmstart.replay.image import Puller
from warmstart.replay.policies import POLICIES
from warmstart.replay.profile import (
    DEFAULT_PROFILE,
    CacheMode,
    ProfileError,
    builtin_profiles,
    load_profile,
)
from warmstart.replay.report import (
    TABLE_HEADERS,
    prepare_report_directory,
    report_json,
    table_rows,
    write_html_report,
)
from warmstart.replay.results import RunResult, summarize
from warmstart.replay.runner import ReplayPlan, run_plan
from warmstart.replay.traces import TRACE_FORMATS, load_trace
from warmstart.replay.workload import Workload, WorkloadError, builtin_workload

__all__ = ["add_parser"]

METRIC_PERIODS_S = (1.0, 10.0, 60.0)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "replay",
        help="replay traffic through the engine against a simulated fleet",
        description="Replay a request or metric trace (or the built-in workload) through the "
        "scaling engine against a simulated fleet, for every policy and cache mode, and print "
        "requests over the latency objective, latency, scale-out times and cost side by side.",
    )
    parser.add_argument(
        "trace",
        nargs="?",
        type=parse_path,
        help="trace file (default: the built-in one-hour chat workload with a burst)",
    )
    parser.add_argument(
        "--format", choices=TRACE_FORMATS, default=None, help="trace format (default: detected)"
    )
    parser.add_argument(
        "--policy",
        action="append",
        choices=POLICIES,
        default=None,
        help="policy to run, repeatable (default: all)",
    )
    parser.add_argument(
        "--cache",
        action="append",
        choices=[m.value for m in CacheMode],
        default=None,
        help="cache mode to run, repeatable (default: all)",
    )
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help=f"built-in profile ({', '.join(builtin_profiles())}) or a TOML file "
        f"(default: {DEFAULT_PROFILE})",
    )
    parser.add_argument(
        "--pull",
        choices=[p.value for p in Puller],
        default=None,
        help="image puller, overriding the profile's: containerd (3 layers at once, one "
        "connection each) or chunked (the layer store's parallel ranges)",
    )
    parser.add_argument(
        "--metric-period",
        type=float,
        choices=METRIC_PERIODS_S,
        default=1.0,
        metavar="SECONDS",
        help="seconds between metric reports: 1, or 10 and 60 to mimic coarser pipelines "
        "(default: 1)",
    )
    parser.add_argument(
        "--duration", type=float, default=None, metavar="SECONDS", help="replay only this long"
    )
    parser.add_argument(
        "--seed",
        type=lambda text: parse_count(text, minimum=0),
        default=0,
        help="seed of generated input, 0 or more (default: 0)",
    )
    parser.add_argument(
        "--jobs",
        type=parse_count,
        default=None,
        metavar="N",
        help="worker processes (default: CPUs)",
    )
    parser.add_argument(
        "--report",
        type=parse_path,
        default=None,
        metavar="DIR",
        help="write an HTML report with plots; the files of an earlier report there are replaced",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    parser.set_defaults(run=run_replay)


class ProgressBar:
    """Redraws one line on a terminal: a bar, runs done, and the last run finished."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.monotonic()

    def __call__(self, done: int, total: int, result: RunResult) -> None:
        filled = round(self.WIDTH * done / total)
        elapsed = time.monotonic() - self.started
        line = (
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} runs"
            f"  {elapsed:.0f} s  last: {result.policy} / {result.mode}"
        )
        self.stream.write("\r" + line.ljust(79))
        if done == total:
            self.stream.write("\r" + " " * 79 + "\r")
        self.stream.flush()


def load_workload(arguments: argparse.Namespace) -> Workload:
    if arguments.trace is None:
        workload = builtin_workload(seed=arguments.seed)
    else:
        workload = load_trace(
            arguments.trace, arguments.format, seed=arguments.seed, duration_s=arguments.duration
        )
    if arguments.duration is not None:
        workload = workload.head(arguments.duration)
    if workload.requests == 0:
        raise WorkloadError(f"{workload.name}: no requests to replay; check the trace's rates")
    return workload


def run_replay(arguments: argparse.Namespace) -> int:
    try:
        profile = load_profile(arguments.profile)
        workload = load_workload(arguments)
    except (ProfileError, WorkloadError) as error:
        raise UsageError(str(error)) from None
    if arguments.report is not None:
        # Checked before the runs, so an unwritable directory does not lose them.
        try:
            prepare_report_directory(arguments.report)
        except OSError as error:
            raise UsageError(f"cannot write --report: {error}") from None
    if arguments.pull is not None:
        import dataclasses

        profile = dataclasses.replace(profile, puller=Puller(arguments.pull))
    plan = ReplayPlan(
        workload,
        profile,
        # dict.fromkeys drops a policy or mode given twice, keeping the order.
        policies=tuple(dict.fromkeys(arguments.policy or POLICIES)),
        modes=tuple(
            CacheMode(m) for m in dict.fromkeys(arguments.cache or [m.value for m in CacheMode])
        ),
        seed=arguments.seed,
        options=FleetOptions(metric_period_s=arguments.metric_period),
    )
    progress = None if arguments.json or not sys.stderr.isatty() else ProgressBar(sys.stderr)
    if progress is not None:
        # Run time grows with the span, so show it before the runs start.
        print(
            f"{workload.name}: {workload.requests} requests over {workload.duration_s:.0f} s, "
            f"{len(plan.runs)} runs",
            file=sys.stderr,
        )
    started = time.monotonic()
    results = run_plan(plan, jobs=arguments.jobs, progress=progress)
    elapsed = time.monotonic() - started
    if arguments.report is not None:
        command = "warmstart " + shlex.join(sys.argv[1:]) if sys.argv else ""
        page = write_html_report(arguments.report, results, workload, profile, command=command)
    if arguments.json:
        print_json(report_json(results, workload, profile, arguments.seed))
        return 0
    print(
        f"{workload.name}: {workload.requests} requests over {workload.duration_s:.0f} s; "
        f"profile {profile.name} ({profile.puller.value} pull); objective: time to first token "
        f"<= {profile.service.objective_ttft_s:g} s"
    )
    print_table(TABLE_HEADERS, table_rows([summarize(r) for r in results]))
    runs = f"{len(results)} run" if len(results) == 1 else f"{len(results)} runs"
    print(
        f"{runs} in {elapsed:.1f} s. p50, p95, p99: request latency, queueing plus service; "
        "detect: median seconds from need to decision; to capacity: median / max seconds from "
        "decision to ready."
    )
    if arguments.report is not None:
        print(f"report: {page}")
    return 0

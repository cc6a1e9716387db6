"""Run a replay: every (policy, cache mode) pair over one workload, in parallel processes."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from warmstart.replay.fleet import FleetOptions, service_times, simulate
from warmstart.replay.policies import POLICIES, initial_capacity, policy_spec
from warmstart.replay.profile import CacheMode, Profile
from warmstart.replay.results import RunResult
from warmstart.replay.workload import Workload

__all__ = ["ReplayPlan", "run_one", "run_plan"]

# The fleet starts sized for the mean concurrency of the workload's first 300 s.
INITIAL_WINDOW_S = 300.0

ProgressCallback = Callable[[int, int, RunResult], None]


@dataclass(frozen=True, eq=False)
class ReplayPlan:
    """A workload, a profile, and the policies and cache modes to run it with.

    ``max_capacity`` bounds every policy. ``seed`` drives the start-up jitter; every run uses
    the same seed, so runs differ only by policy and cache mode.
    """

    workload: Workload
    profile: Profile
    policies: tuple[str, ...] = POLICIES
    modes: tuple[CacheMode, ...] = tuple(CacheMode)
    seed: int = 0
    max_capacity: int = 100
    options: FleetOptions = field(default_factory=FleetOptions)

    def __post_init__(self) -> None:
        unknown = [name for name in self.policies if name not in POLICIES]
        if unknown:
            raise ValueError(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
        if not self.policies or not self.modes:
            raise ValueError("a replay needs at least one policy and one cache mode")

    @property
    def runs(self) -> list[tuple[str, CacheMode]]:
        """Every (policy, mode) pair, policies outermost."""
        return [(policy, mode) for policy in self.policies for mode in self.modes]

    def starting_capacity(self) -> int:
        """Return the ready instances every run starts with."""
        _, service = service_times(self.workload, self.profile)
        early = self.workload.arrival_s < INITIAL_WINDOW_S
        window = min(INITIAL_WINDOW_S, max(self.workload.duration_s, 1.0))
        concurrency = float(np.sum(service[early])) / window
        return initial_capacity(concurrency, self.profile.service.target_concurrency)


def run_one(plan: ReplayPlan, policy: str, mode: CacheMode) -> RunResult:
    """Run ``policy`` with instances started in cache ``mode``."""
    profile = plan.profile
    spec = policy_spec(
        policy,
        target=profile.service.target_concurrency,
        time_to_ready_s=profile.time_to_ready_s(mode),
        initial_capacity=plan.starting_capacity(),
        max_capacity=plan.max_capacity,
        metric_period_s=plan.options.metric_period_s,
    )
    return simulate(
        plan.workload, profile, spec, mode, policy=policy, seed=plan.seed, options=plan.options
    )


def _run_indexed(plan: ReplayPlan, index: int) -> tuple[int, RunResult]:
    policy, mode = plan.runs[index]
    return index, run_one(plan, policy, mode)


def run_plan(
    plan: ReplayPlan, *, jobs: int | None = None, progress: ProgressCallback | None = None
) -> list[RunResult]:
    """Run every pair of ``plan`` and return the results in ``plan.runs`` order.

    ``jobs`` is the number of worker processes (default: one per CPU, at most one per run);
    1 runs everything in this process. ``progress(done, total, result)`` is called as each
    run ends. Results do not depend on ``jobs``.
    """
    runs = plan.runs
    workers = min(len(runs), jobs if jobs is not None else (os.cpu_count() or 1))
    results: list[RunResult | None] = [None] * len(runs)
    if workers <= 1:
        for index in range(len(runs)):
            _, result = _run_indexed(plan, index)
            results[index] = result
            if progress is not None:
                progress(index + 1, len(runs), result)
    else:
        # Forked workers start at once and need no importable __main__; spawn is the fallback
        # where fork does not exist.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_ignore_interrupts
        )
        try:
            # Runs of the 1 s warmstart policy take the most time, so they start first.
            order = sorted(range(len(runs)), key=lambda i: runs[i][0] not in ("warmstart",))
            futures = [pool.submit(_run_indexed, plan, index) for index in order]
            for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
                index, result = future.result()
                results[index] = result
                if progress is not None:
                    progress(done, len(runs), result)
        except BaseException:
            # Ctrl-C or a failed run: the other runs are not wanted, so stop the workers
            # instead of waiting for the runs they have started.
            _terminate(pool)
            raise
        pool.shutdown()
    return [result for result in results if result is not None]


def _ignore_interrupts() -> None:
    """Leave Ctrl-C to the parent process, which stops the workers. A worker that got it
    would print a traceback for its KeyboardInterrupt and then carry on with the next run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _terminate(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Cancel the queued runs and end the worker processes with SIGTERM."""
    # NOTE: ProcessPoolExecutor has no public way to end its workers before Python 3.14
    # (terminate_workers), so this reads its private map of them.
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()

"""Trace replay: drive the scaling engine with a workload against a simulated fleet.

``run_plan(ReplayPlan(workload, profile))`` runs every policy with every cache mode and returns
one ``RunResult`` per pair; ``summarize`` turns results into table rows. Workloads come from
``load_trace`` (public trace formats) or ``builtin_workload``; profiles from ``load_profile``.
"""

from warmstart.replay.fleet import FleetOptions, simulate
from warmstart.replay.image import Network, Puller, PullTimes, fit_connection_rate, pull_times
from warmstart.replay.policies import POLICIES, policy_spec
from warmstart.replay.profile import (
    DEFAULT_PROFILE,
    CacheMode,
    Profile,
    ProfileError,
    builtin_profiles,
    load_profile,
    parse_profile,
)
from warmstart.replay.results import RunResult, ScaleOut, Summary, Timeline, summarize
from warmstart.replay.runner import ReplayPlan, run_one, run_plan
from warmstart.replay.traces import TRACE_FORMATS, load_trace
from warmstart.replay.workload import Workload, WorkloadError, builtin_workload

__all__ = [
    "DEFAULT_PROFILE",
    "POLICIES",
    "TRACE_FORMATS",
    "CacheMode",
    "FleetOptions",
    "Network",
    "Profile",
    "ProfileError",
    "PullTimes",
    "Puller",
    "ReplayPlan",
    "RunResult",
    "ScaleOut",
    "Summary",
    "Timeline",
    "Workload",
    "WorkloadError",
    "builtin_profiles",
    "builtin_workload",
    "fit_connection_rate",
    "load_profile",
    "load_trace",
    "parse_profile",
    "policy_spec",
    "pull_times",
    "run_one",
    "run_plan",
    "simulate",
    "summarize",
]

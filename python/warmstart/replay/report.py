"""Reports of a replay: a text table, a JSON document, and an HTML page with plots.

Plots need matplotlib; it is imported only when ``write_html_report`` runs.
"""

from __future__ import annotations

import html
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.replay.profile import STAGES, Profile
from warmstart.replay.results import RunResult, Summary, summarize
from warmstart.replay.workload import Workload

__all__ = [
    "REPORT_FILES",
    "TABLE_HEADERS",
    "prepare_report_directory",
    "report_json",
    "table_rows",
    "write_html_report",
]

TABLE_HEADERS = (
    "policy",
    "cache",
    "over objective",
    "p50 s",
    "p95 s",
    "p99 s",
    "detect s",
    "to capacity s",
    "instance-h",
    "standby-h",
    "scale events",
)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def table_rows(summaries: Sequence[Summary]) -> list[list[str]]:
    """Return one text row per summary, in ``TABLE_HEADERS`` order.

    ``detect s`` is the median seconds from need to decision; ``to capacity s`` the median and
    maximum seconds from decision to ready.
    """
    rows = []
    for s in summaries:
        capacity = (
            "-"
            if s.capacity_median_s is None
            else f"{_seconds(s.capacity_median_s)} / {_seconds(s.capacity_max_s)}"
        )
        rows.append(
            [
                s.policy,
                s.mode,
                f"{s.over_objective} ({s.over_objective_pct:.1f}%)",
                _seconds(s.latency_p50_s),
                _seconds(s.latency_p95_s),
                _seconds(s.latency_p99_s),
                _seconds(s.detect_median_s),
                capacity,
                f"{s.instance_seconds / 3600:.2f}",
                f"{s.standby_seconds / 3600:.2f}",
                str(s.scale_events),
            ]
        )
    return rows


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 6)


def report_json(
    results: Sequence[RunResult], workload: Workload, profile: Profile, seed: int
) -> dict[str, Any]:
    """Return a JSON-ready document: the inputs and, per run, its summary and scale-outs.

    Infinite percentiles (unfinished requests) are written as null.
    """
    runs = []
    for result in results:
        summary = summarize(result)
        runs.append(
            {
                "policy": result.policy,
                "cache": result.mode,
                "requests": summary.requests,
                "over_objective": summary.over_objective,
                "over_objective_pct": round(summary.over_objective_pct, 4),
                "unfinished": summary.unfinished,
                "latency_s": {
                    "p50": _finite(summary.latency_p50_s),
                    "p95": _finite(summary.latency_p95_s),
                    "p99": _finite(summary.latency_p99_s),
                },
                "ttft_p99_s": _finite(summary.ttft_p99_s),
                "detect_median_s": _finite(summary.detect_median_s),
                "time_to_capacity_s": {
                    "median": _finite(summary.capacity_median_s),
                    "max": _finite(summary.capacity_max_s),
                },
                "instance_seconds": round(summary.instance_seconds, 3),
                "standby_seconds": round(summary.standby_seconds, 3),
                "scale_events": summary.scale_events,
                "launches": result.launches,
                "stages_s": {k: round(v, 3) for k, v in result.stages_s.items()},
                "scale_outs": [
                    {
                        "decided_at_s": s.decided_at_s,
                        "added": s.added,
                        "detect_s": _finite(s.detect_s),
                        "time_to_capacity_s": _finite(s.time_to_capacity_s),
                    }
                    for s in result.scale_outs
                ],
            }
        )
    return {
        "workload": {
            "name": workload.name,
            "requests": workload.requests,
            "duration_s": workload.duration_s,
        },
        "profile": profile.name,
        "objective_ttft_s": profile.service.objective_ttft_s,
        "seed": seed,
        "runs": runs,
    }


# The files write_html_report creates, removed from the directory before a new report.
REPORT_FILES = ("index.html", "latency.png", "stages.png", "capacity-*.png")


def prepare_report_directory(directory: Path) -> None:
    """Create ``directory`` and remove the files of an earlier report from it.

    Other files are kept. Raise ``OSError`` when the directory cannot be created or written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".warmstart-write-check-"):
        pass
    for pattern in REPORT_FILES:
        for path in directory.glob(pattern):
            path.unlink(missing_ok=True)


def write_html_report(
    directory: Path,
    results: Sequence[RunResult],
    workload: Workload,
    profile: Profile,
    *,
    command: str = "",
) -> Path:
    """Write ``index.html`` and its PNG plots into ``directory``; return the page's path.

    Plots: demand and capacity over time per policy (first cache mode, and every mode for one
    policy), the latency distribution of every run, and the mean scale-out stages per cache mode.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prepare_report_directory(directory)
    policies = list(dict.fromkeys(r.policy for r in results))
    modes = list(dict.fromkeys(r.mode for r in results))
    by_key = {(r.policy, r.mode): r for r in results}
    images: list[tuple[str, str]] = []

    def save(figure: Any, name: str, caption: str) -> None:
        figure.tight_layout()
        figure.savefig(directory / name, dpi=110)
        plt.close(figure)
        images.append((name, caption))

    for mode in modes:
        figure, axes = plt.subplots(
            len(policies), 1, figsize=(10, 2.2 * len(policies)), sharex=True, squeeze=False
        )
        for axis, policy in zip(axes[:, 0], policies, strict=True):
            result = by_key.get((policy, mode))
            if result is None:
                continue
            timeline = result.timeline
            minutes = timeline.time_s / 60
            target = profile.service.target_concurrency
            axis.plot(
                minutes, timeline.demand / target, lw=0.8, color="0.5", label="demand / target"
            )
            axis.step(minutes, timeline.ready, where="post", label="ready", color="tab:blue")
            axis.step(
                minutes,
                timeline.ready + timeline.starting,
                where="post",
                label="ready + starting",
                color="tab:orange",
                lw=0.8,
            )
            axis.set_ylabel(policy)
        axes[0, 0].legend(loc="upper right", fontsize="small")
        axes[-1, 0].set_xlabel("minutes")
        figure.suptitle(f"demand and capacity (instances), cache mode {mode}")
        save(
            figure,
            f"capacity-{mode}.png",
            f"Demand in instances at target, and capacity, cache mode {mode}.",
        )

    figure, axis = plt.subplots(figsize=(10, 4))
    for result in results:
        latency = np.sort(result.latency_s[np.isfinite(result.latency_s)])
        if latency.size:
            share = np.arange(1, latency.size + 1) / result.requests
            axis.plot(latency, share, lw=0.8, label=f"{result.policy} / {result.mode}")
    axis.set_xscale("log")
    axis.set_xlabel("latency s (queueing + service)")
    axis.set_ylabel("share of requests")
    axis.legend(fontsize="x-small", ncol=2)
    save(figure, "latency.png", "Latency distribution of every run.")

    figure, axis = plt.subplots(figsize=(8, 4))
    bottoms = np.zeros(len(modes))
    for stage in STAGES:
        heights = [
            float(np.mean([r.stages_s[stage] for r in results if r.mode == mode and r.launches]))
            if any(r.mode == mode and r.launches for r in results)
            else 0.0
            for mode in modes
        ]
        axis.bar(modes, heights, bottom=bottoms, label=stage)
        bottoms += np.asarray(heights)
    axis.set_ylabel("seconds per launch (mean)")
    axis.legend()
    save(
        figure,
        "stages.png",
        "Scale-out stages per cache mode, mean over the launches of all policies.",
    )

    rows = table_rows([summarize(r) for r in results])
    header = "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    figures = "".join(
        f'<figure><img src="{name}" alt="{html.escape(caption)}"><figcaption>'
        f"{html.escape(caption)}</figcaption></figure>"
        for name, caption in images
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>warmstart replay: {html.escape(workload.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
img{{max-width:100%}}</style></head><body>
<h1>warmstart replay: {html.escape(workload.name)}</h1>
<p>{workload.requests} requests over {workload.duration_s:.0f} s; profile
{html.escape(profile.name)}: {html.escape(profile.description)}. Objective: time to first token
at most {profile.service.objective_ttft_s:g} s.</p>
<pre>{html.escape(command)}</pre>
<table><tr>{header}</tr>{body}</table>
{figures}
</body></html>
"""
    path = directory / "index.html"
    path.write_text(page, encoding="utf-8")
    return path

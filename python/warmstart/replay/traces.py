"""Trace loaders: read public request and metric traces into a ``Workload``.

Formats, detected from the file name and the CSV header when not given:

- ``azure-llm``: the Azure LLM inference traces of 2023 and 2024 (``TIMESTAMP,ContextTokens,
  GeneratedTokens``), one row per request with its arrival time and token counts.
- ``mooncake``: Mooncake JSONL, one object per request with ``timestamp`` (milliseconds),
  ``input_length`` and ``output_length``.
- ``instance-metric``: a per-instance request-rate CSV with a time column (``time``,
  ``timestamp`` or ``timestamp_anon``, seconds), an instance column (``instance`` or
  ``container_ip``) and ``value`` (requests per second). A missing row means that instance did
  not report, not that it served nothing: its last value holds for two sample periods.
  Rows without an instance (gateway totals) are skipped.
- ``time-value``: a ``time,value`` CSV of the endpoint's request rate (seconds, requests per
  second); each rate applies until the next row.
- ``azure-functions``: the Azure Functions invocation trace of 2021
  (``app,func,end_timestamp,duration``); arrival is end minus duration, in seconds.
- ``requests``: ``arrival_s`` and either ``input_tokens,output_tokens`` or ``service_s``.

Metric traces become Poisson arrivals at the recorded rate, with the built-in workload's token
distribution, drawn from ``seed``. Every workload starts at 0 s.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from warmstart.replay.workload import Workload, WorkloadError, workload_from_rate

__all__ = ["TRACE_FORMATS", "detect_format", "endpoint_rate", "load_trace"]

TRACE_FORMATS = (
    "azure-llm",
    "mooncake",
    "instance-metric",
    "time-value",
    "azure-functions",
    "requests",
)

_TIME_COLUMNS = ("time", "timestamp", "timestamp_anon", "time_s")
_INSTANCE_COLUMNS = ("instance", "container_ip")


def detect_format(path: Path) -> str:
    """Return the trace format of the file at ``path`` from its name and header."""
    if path.suffix in (".jsonl", ".json"):
        return "mooncake"
    header = _read_header(path)
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= set(header):
        return "azure-llm"
    if {"end_timestamp", "duration"} <= set(header):
        return "azure-functions"
    if "arrival_s" in header:
        return "requests"
    has_time = _pick(header, _TIME_COLUMNS) is not None
    if has_time and "value" in header:
        return "instance-metric" if _pick(header, _INSTANCE_COLUMNS) else "time-value"
    raise WorkloadError(
        f"{path}: cannot tell the trace format from columns {header}; pass --format with one "
        f"of {', '.join(TRACE_FORMATS)}"
    )


def load_trace(path: str | Path, trace_format: str | None = None, *, seed: int = 0) -> Workload:
    """Load the trace at ``path`` as a workload, detecting its format when None.

    ``seed`` drives the arrivals generated for metric traces. Raise ``WorkloadError`` for an
    unknown format, a missing file or a malformed row, naming the file and the line.
    """
    source = Path(path)
    if not source.is_file():
        raise WorkloadError(f"trace file {source} not found")
    chosen = trace_format or detect_format(source)
    if chosen == "azure-llm":
        return _load_azure_llm(source)
    if chosen == "mooncake":
        return _load_mooncake(source)
    if chosen == "instance-metric":
        return _load_instance_metric(source, seed)
    if chosen == "time-value":
        return _load_time_value(source, seed)
    if chosen == "azure-functions":
        return _load_azure_functions(source)
    if chosen == "requests":
        return _load_requests(source)
    raise WorkloadError(
        f"unknown trace format {chosen!r}; choose one of {', '.join(TRACE_FORMATS)}"
    )


def _pick(header: Sequence[str], names: Sequence[str]) -> str | None:
    return next((name for name in names if name in header), None)


def _read_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), [])


def _columns(path: Path, names: Sequence[str]) -> dict[str, list[str]]:
    """Read the named columns of a CSV file as strings."""
    columns: dict[str, list[str]] = {name: [] for name in names}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in names if name not in (reader.fieldnames or [])]
        if missing:
            raise WorkloadError(f"{path}: missing columns {missing}")
        for row in reader:
            for name in names:
                columns[name].append(row[name] or "")
    return columns


def _floats(path: Path, name: str, values: list[str]) -> npt.NDArray[np.float64]:
    """Convert a column to floats; raise ``WorkloadError`` naming the first bad line."""
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        for line, value in enumerate(values, start=2):
            try:
                float(value)
            except ValueError:
                raise WorkloadError(f"{path}:{line}: invalid {name} {value!r}") from None
        raise


def _requests(
    name: str,
    arrival_s: npt.NDArray[np.float64],
    *,
    input_tokens: npt.NDArray[np.float64] | None = None,
    output_tokens: npt.NDArray[np.float64] | None = None,
    service_s: npt.NDArray[np.float64] | None = None,
) -> Workload:
    """Build a workload from unsorted request columns, shifted to start at 0 s."""
    if arrival_s.size == 0:
        raise WorkloadError(f"{name}: the trace has no requests")
    order = np.argsort(arrival_s, kind="stable")
    arrivals = arrival_s[order] - arrival_s[order[0]]
    return Workload(
        name=name,
        arrival_s=arrivals,
        duration_s=float(np.ceil(arrivals[-1])),
        input_tokens=None if input_tokens is None else input_tokens[order].astype(np.int64),
        output_tokens=None if output_tokens is None else output_tokens[order].astype(np.int64),
        service_s=None if service_s is None else service_s[order],
    )


def _load_azure_llm(path: Path) -> Workload:
    data = _columns(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    try:
        # numpy parses ISO 8601 with up to nanosecond fractions once the space becomes a T.
        stamps = np.array([t.replace(" ", "T") for t in data["TIMESTAMP"]], dtype="datetime64[ns]")
    except ValueError as error:
        raise WorkloadError(f"{path}: invalid TIMESTAMP value: {error}") from None
    if stamps.size == 0:
        raise WorkloadError(f"{path}: the trace has no requests")
    seconds = (stamps - stamps.min()).astype(np.int64) / 1e9
    return _requests(
        path.stem,
        seconds,
        input_tokens=_floats(path, "ContextTokens", data["ContextTokens"]),
        output_tokens=_floats(path, "GeneratedTokens", data["GeneratedTokens"]),
    )


def _load_mooncake(path: Path) -> Workload:
    rows: list[tuple[float, float, float]] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                rows.append(
                    (
                        float(record["timestamp"]) / 1000.0,
                        float(record["input_length"]),
                        float(record["output_length"]),
                    )
                )
            except (ValueError, KeyError, TypeError) as error:
                raise WorkloadError(
                    f"{path}:{line_number}: expected a JSON object with timestamp (ms), "
                    f"input_length and output_length: {error}"
                ) from None
    columns = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return _requests(
        path.stem, columns[:, 0], input_tokens=columns[:, 1], output_tokens=columns[:, 2]
    )


def _load_instance_metric(path: Path, seed: int) -> Workload:
    header = _read_header(path)
    time_column = _pick(header, _TIME_COLUMNS)
    instance_column = _pick(header, _INSTANCE_COLUMNS)
    if time_column is None or instance_column is None or "value" not in header:
        raise WorkloadError(f"{path}: need a time, an instance and a value column; got {header}")
    data = _columns(path, (time_column, instance_column, "value"))
    keep = [i for i, name in enumerate(data[instance_column]) if name not in ("", "None", "NULL")]
    times = _floats(path, time_column, [data[time_column][i] for i in keep])
    values = _floats(path, "value", [data["value"][i] for i in keep])
    if times.size == 0:
        raise WorkloadError(
            f"{path}: no row names an instance; for an endpoint-level series use --format "
            "time-value"
        )
    grid, total, period = endpoint_rate(times, [data[instance_column][i] for i in keep], values)
    duration = float(grid[-1] - grid[0] + period)
    return workload_from_rate(path.stem, grid - grid[0], total, duration, seed=seed)


def endpoint_rate(
    times_s: npt.ArrayLike, instances: Sequence[str], values: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]:
    """Sum per-instance samples into the endpoint's value at every distinct sample time.

    A missing row is a missed report, not a zero: an instance's last value counts for two
    sample periods (the median gap between distinct times) and then no longer. Return the
    times, the totals and the sample period in seconds.
    """
    times = np.asarray(times_s, dtype=np.float64)
    data = np.asarray(values, dtype=np.float64)
    names = np.asarray(instances)
    grid = np.unique(times)
    period = float(np.median(np.diff(grid))) if grid.size > 1 else 1.0
    total = np.zeros(grid.size)
    for instance in np.unique(names):
        mine = names == instance
        order = np.argsort(times[mine], kind="stable")
        own_times, own_values = times[mine][order], data[mine][order]
        latest = np.searchsorted(own_times, grid, side="right") - 1
        fresh = (latest >= 0) & (grid - own_times[np.clip(latest, 0, None)] <= 2 * period)
        total[fresh] += own_values[latest[fresh]]
    return grid, total, period


def _load_time_value(path: Path, seed: int) -> Workload:
    header = _read_header(path)
    time_column = _pick(header, _TIME_COLUMNS)
    if time_column is None:
        raise WorkloadError(f"{path}: need a time column; got {header}")
    data = _columns(path, (time_column, "value"))
    times = _floats(path, time_column, data[time_column])
    values = _floats(path, "value", data["value"])
    if times.size == 0:
        raise WorkloadError(f"{path}: the trace has no rows")
    order = np.argsort(times, kind="stable")
    times, values = times[order] - times[order[0]], values[order]
    period = float(np.median(np.diff(times))) if times.size > 1 else 1.0
    return workload_from_rate(path.stem, times, values, float(times[-1] + period), seed=seed)


def _load_azure_functions(path: Path) -> Workload:
    data = _columns(path, ("end_timestamp", "duration"))
    end = _floats(path, "end_timestamp", data["end_timestamp"])
    duration = _floats(path, "duration", data["duration"])
    return _requests(path.stem, end - duration, service_s=duration)


def _load_requests(path: Path) -> Workload:
    header = _read_header(path)
    if "service_s" in header:
        data = _columns(path, ("arrival_s", "service_s"))
        return _requests(
            path.stem,
            _floats(path, "arrival_s", data["arrival_s"]),
            service_s=_floats(path, "service_s", data["service_s"]),
        )
    data = _columns(path, ("arrival_s", "input_tokens", "output_tokens"))
    return _requests(
        path.stem,
        _floats(path, "arrival_s", data["arrival_s"]),
        input_tokens=_floats(path, "input_tokens", data["input_tokens"]),
        output_tokens=_floats(path, "output_tokens", data["output_tokens"]),
    )

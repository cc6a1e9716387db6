"""Trace loaders: read public request traces into a ``Workload``.

Formats, detected from the CSV header:

- ``azure-llm``: the Azure LLM inference traces of 2023 (``TIMESTAMP,ContextTokens,
  GeneratedTokens``), one row per request with its arrival time and token counts.
- ``azure-functions``: the Azure Functions invocation trace of 2021
  (``app,func,end_timestamp,duration``); arrival is end minus duration, in seconds.
- ``requests``: a plain CSV with ``arrival_s`` and either ``input_tokens,output_tokens`` or
  ``service_s``, for traces converted by hand.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from warmstart.replay.workload import Workload, WorkloadError

__all__ = ["TRACE_FORMATS", "detect_format", "load_trace"]

TRACE_FORMATS = ("azure-llm", "azure-functions", "requests")

_HEADERS = {
    "azure-llm": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "azure-functions": ("app", "func", "end_timestamp", "duration"),
}


def detect_format(path: Path) -> str:
    """Return the trace format of the CSV file at ``path`` from its header line."""
    header = _read_header(path)
    for name, columns in _HEADERS.items():
        if all(column in header for column in columns):
            return name
    if "arrival_s" in header:
        return "requests"
    raise WorkloadError(
        f"{path}: unknown trace format with columns {header}; expected the columns of one of "
        f"{', '.join(TRACE_FORMATS)}"
    )


def load_trace(path: str | Path, trace_format: str | None = None) -> Workload:
    """Load the trace at ``path`` as a workload, detecting its format when None.

    Arrival times are shifted so the first request arrives at 0 s. Raise ``WorkloadError`` for
    an unknown format or a malformed row, naming the file and the line.
    """
    source = Path(path)
    chosen = trace_format or detect_format(source)
    if chosen == "azure-llm":
        return _load_azure_llm(source)
    if chosen == "azure-functions":
        return _load_azure_functions(source)
    if chosen == "requests":
        return _load_requests(source)
    raise WorkloadError(
        f"unknown trace format {chosen!r}; choose one of {', '.join(TRACE_FORMATS)}"
    )


def _read_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    except FileNotFoundError:
        raise WorkloadError(f"trace file {path} not found") from None


def _columns(path: Path, names: tuple[str, ...]) -> dict[str, list[str]]:
    """Read the named columns of a CSV file as strings."""
    columns: dict[str, list[str]] = {name: [] for name in names}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in names if name not in (reader.fieldnames or [])]
        if missing:
            raise WorkloadError(f"{path}: missing columns {missing}")
        for row in reader:
            for name in names:
                columns[name].append(row[name])
    return columns


def _numbers(path: Path, name: str, values: list[str], dtype: type) -> np.ndarray:  # type: ignore[type-arg]
    try:
        return np.asarray(values, dtype=np.float64).astype(dtype)
    except ValueError:
        for line, value in enumerate(values, start=2):
            try:
                float(value)
            except ValueError:
                raise WorkloadError(f"{path}:{line}: invalid {name} {value!r}") from None
        raise


def _sorted(name: str, arrival_s: np.ndarray, **columns: np.ndarray | None) -> Workload:  # type: ignore[type-arg]
    order = np.argsort(arrival_s, kind="stable")
    arrivals = arrival_s[order]
    if arrivals.shape[0]:
        arrivals = arrivals - arrivals[0]
    duration = float(np.ceil(arrivals[-1])) if arrivals.shape[0] else 0.0
    return Workload(
        name=name,
        arrival_s=arrivals.astype(np.float64),
        duration_s=duration,
        **{key: None if value is None else value[order] for key, value in columns.items()},
    )


def _load_azure_llm(path: Path) -> Workload:
    data = _columns(path, _HEADERS["azure-llm"])
    try:
        # numpy parses ISO 8601 with up to nanosecond fractions once the space becomes a T.
        stamps = np.array([t.replace(" ", "T") for t in data["TIMESTAMP"]], dtype="datetime64[ns]")
    except ValueError as error:
        raise WorkloadError(f"{path}: invalid TIMESTAMP value: {error}") from None
    seconds = (
        (stamps - stamps.min()).astype(np.int64) / 1e9 if stamps.size else stamps.astype(float)
    )
    return _sorted(
        path.stem,
        np.asarray(seconds, dtype=np.float64),
        input_tokens=_numbers(path, "ContextTokens", data["ContextTokens"], np.int64),
        output_tokens=_numbers(path, "GeneratedTokens", data["GeneratedTokens"], np.int64),
    )


def _load_azure_functions(path: Path) -> Workload:
    data = _columns(path, ("end_timestamp", "duration"))
    end = _numbers(path, "end_timestamp", data["end_timestamp"], np.float64)
    duration = _numbers(path, "duration", data["duration"], np.float64)
    return _sorted(path.stem, end - duration, service_s=duration)


def _load_requests(path: Path) -> Workload:
    header = _read_header(path)
    if "service_s" in header:
        data = _columns(path, ("arrival_s", "service_s"))
        return _sorted(
            path.stem,
            _numbers(path, "arrival_s", data["arrival_s"], np.float64),
            service_s=_numbers(path, "service_s", data["service_s"], np.float64),
        )
    data = _columns(path, ("arrival_s", "input_tokens", "output_tokens"))
    return _sorted(
        path.stem,
        _numbers(path, "arrival_s", data["arrival_s"], np.float64),
        input_tokens=_numbers(path, "input_tokens", data["input_tokens"], np.int64),
        output_tokens=_numbers(path, "output_tokens", data["output_tokens"], np.int64),
    )

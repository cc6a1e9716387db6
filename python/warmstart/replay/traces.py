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
  second); each rate applies until the next row. A file whose instance column names an
  instance is rejected, since its rates are per instance.
- ``azure-functions``: the Azure Functions invocation trace of 2021
  (``app,func,end_timestamp,duration``); arrival is end minus duration, in seconds.
- ``requests``: ``arrival_s`` and either ``input_tokens,output_tokens`` or ``service_s``.

Metric traces become Poisson arrivals at the recorded rate, with the built-in workload's token
distribution, drawn from ``seed``. Every workload starts at 0 s.

The metric formats are detected only when the file name says the series is a rate (it contains
``qps``, ``rps`` or ``rate``) or a ``request_type`` column is present, because latency and
utilization series have the same columns. Files may be UTF-8 (with or without a byte order
mark), UTF-16 with a byte order mark, or gzip-compressed.

A trace may also be a FIFO or a pipe, such as bash's ``<(zcat trace.csv.gz)``. A pipe can be
read only once and the loaders read a trace more than once (format detection reads the header
first), so the pipe is read to its end at the first read and its bytes are kept in memory until
the trace is loaded. The columns of the trace take several times that memory anyway. A pipe
has no useful file name, so a Mooncake trace is detected from its first character, ``{``.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math
import re
import stat
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np
import numpy.typing as npt

from warmstart.replay.workload import (
    MAX_SPAN_S,
    Workload,
    WorkloadError,
    workload_from_rate,
)

__all__ = ["TRACE_FORMATS", "TraceFile", "detect_format", "endpoint_rate", "load_trace"]

TRACE_FORMATS = (
    "azure-llm",
    "mooncake",
    "instance-metric",
    "time-value",
    "azure-functions",
    "requests",
)

# A POSIX (ustar) tar header is one 512-byte block with "ustar" at byte 257.
TAR_BLOCK = 512
TAR_MAGIC_OFFSET = 257
TAR_MAGIC = b"ustar"

# A larger count is a unit or column mistake, since no model has a context of 10^9 tokens.
MAX_TOKENS = 1_000_000_000

_TIME_COLUMNS = ("time", "timestamp", "timestamp_anon", "time_s")
_INSTANCE_COLUMNS = ("instance", "container_ip")
# Instance cells of rows that name no instance, such as a gateway's totals.
_NO_INSTANCE = ("", "None", "NULL")
_RATE_NAME_HINTS = ("qps", "rps", "rate")

# A full ISO 8601 date and time as the Azure traces write it: a space or T between date and
# time, up to nanoseconds, and an optional UTC offset such as +00:00.
_ISO_DATETIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)"
    r"(?:(Z)|([+-])(\d{2}):?(\d{2}))?"
)


class TraceFile:
    """A trace file that its loaders can read several times from the start.

    A regular file is opened again for each read. A FIFO is read to its end at the first read,
    and later reads get its bytes from memory. ``str()`` gives the path, for messages.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.stem = path.stem
        self._pipe = stat.S_ISFIFO(path.stat().st_mode)
        self._data: bytes | None = None

    def __str__(self) -> str:
        return str(self.path)

    def __format__(self, spec: str) -> str:
        return format(str(self.path), spec)

    def open_binary(self) -> BinaryIO:
        """Open the trace for reading from its first byte."""
        if not self._pipe:
            return self.path.open("rb")
        if self._data is None:
            with self.path.open("rb") as pipe:
                self._data = pipe.read()
        return io.BytesIO(self._data)


def detect_format(path: Path | TraceFile) -> str:
    """Return the trace format of the file at ``path`` from its name and first bytes."""
    trace = path if isinstance(path, TraceFile) else _trace_file(path)
    return _detect_format(trace)


def _detect_format(path: TraceFile) -> str:
    if Path(path.name.removesuffix(".gz")).suffix in (".jsonl", ".json"):
        return "mooncake"
    if _first_character(path) == "{":
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
        metric = "instance-metric" if _pick(header, _INSTANCE_COLUMNS) else "time-value"
        if "request_type" in header or any(h in path.name.lower() for h in _RATE_NAME_HINTS):
            return metric
        raise WorkloadError(
            f"{path}: columns {header} are a metric series, and neither the file name (no "
            f"{', '.join(_RATE_NAME_HINTS)}) nor a request_type column says it is a request "
            f"rate; latency and utilization series look the same. If value is requests per "
            f"second, pass --format {metric}"
        )
    raise WorkloadError(
        f"{path}: cannot tell the trace format from columns {header}; pass --format with one "
        f"of {', '.join(TRACE_FORMATS)}"
    )


def load_trace(
    path: str | Path,
    trace_format: str | None = None,
    *,
    seed: int = 0,
    duration_s: float | None = None,
) -> Workload:
    """Load the trace at ``path`` as a workload, detecting its format when None.

    ``path`` is a regular file or a FIFO (a pipe is read once, into memory). ``seed`` drives
    the arrivals generated for metric traces. ``duration_s`` keeps only the first seconds,
    before any span or size limit applies. Raise ``WorkloadError`` for an unknown format, a
    missing or unreadable file, a malformed row (naming the file and the line), a span over
    ``MAX_SPAN_S`` or a metric series that would generate too many requests.
    """
    source = _trace_file(Path(path))
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise WorkloadError(f"invalid duration {duration_s!r}; give a positive number of seconds")
    chosen = trace_format or _detect_format(source)
    if chosen == "azure-llm":
        return _load_azure_llm(source, duration_s)
    if chosen == "mooncake":
        return _load_mooncake(source, duration_s)
    if chosen == "instance-metric":
        return _load_instance_metric(source, seed, duration_s)
    if chosen == "time-value":
        return _load_time_value(source, seed, duration_s)
    if chosen == "azure-functions":
        return _load_azure_functions(source, duration_s)
    if chosen == "requests":
        return _load_requests(source, duration_s)
    raise WorkloadError(
        f"unknown trace format {chosen!r}; choose one of {', '.join(TRACE_FORMATS)}"
    )


def _trace_file(path: Path) -> TraceFile:
    """Check that ``path`` is a regular file or a FIFO; raise ``WorkloadError`` if not."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise WorkloadError(f"trace file {path} not found") from None
    except OSError as error:
        raise WorkloadError(f"cannot read trace {path}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise WorkloadError(f"trace {path} is a directory; pass a trace file")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise WorkloadError(
            f"trace {path} is neither a regular file nor a FIFO; pass a trace file, or pipe "
            "the trace in with <(command)"
        )
    return TraceFile(path)


def _pick(header: Sequence[str], names: Sequence[str]) -> str | None:
    return next((name for name in names if name in header), None)


@contextlib.contextmanager
def _open_text(path: TraceFile) -> Iterator[TextIO]:
    """Open a UTF-8 (a byte order mark is skipped), UTF-16 or gzip-compressed file as text."""
    with contextlib.ExitStack() as stack:
        binary = stack.enter_context(path.open_binary())
        # A regular file, and the bytes kept of a FIFO, can seek.
        magic = binary.read(2)
        binary.seek(0)
        text: TextIO
        if magic == b"\x1f\x8b":
            inflated = stack.enter_context(gzip.GzipFile(fileobj=binary, mode="rb"))
            _reject_tar(path, inflated)
            text = io.TextIOWrapper(inflated, encoding="utf-8-sig", newline="")
        else:
            _reject_tar(path, binary)
            utf16 = magic in (b"\xff\xfe", b"\xfe\xff")
            encoding = "utf-16" if utf16 else "utf-8-sig"
            text = io.TextIOWrapper(binary, encoding=encoding, newline="")
        with text:
            yield text


def _reject_tar(path: TraceFile, stream: BinaryIO | gzip.GzipFile) -> None:
    """Raise ``WorkloadError`` when ``stream`` starts with a POSIX tar header, else rewind it."""
    header = stream.read(TAR_BLOCK)
    stream.seek(0)
    if header[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + len(TAR_MAGIC)] == TAR_MAGIC:
        raise WorkloadError(
            f"{path}: this is a tar archive, not a trace; extract the trace file from it "
            "(tar -xf) and pass that file"
        )


@contextlib.contextmanager
def _reading(path: TraceFile) -> Iterator[TextIO]:
    """Open ``path`` as text; turn decoding and reading failures into ``WorkloadError``."""
    try:
        with _open_text(path) as handle:
            yield handle
    except UnicodeDecodeError as error:
        raise WorkloadError(
            f"{path}: invalid UTF-8 at byte {error.start}; save the trace as UTF-8 text "
            "(gzip-compressed is fine)"
        ) from None
    except (OSError, EOFError) as error:
        raise WorkloadError(f"{path}: cannot read the trace: {error}") from None
    except zlib.error as error:
        # A damaged gzip stream; a truncated one raises EOFError above.
        raise WorkloadError(
            f"{path}: the gzip data is corrupt ({error}); download or compress the trace again"
        ) from None


def _first_character(path: TraceFile) -> str:
    """Return the first character of the trace that is not white space ("" for none)."""
    with _reading(path) as handle:
        for line in handle:
            stripped = line.lstrip()
            if stripped:
                return stripped[0]
    return ""


def _read_header(path: TraceFile) -> list[str]:
    with _reading(path) as handle:
        try:
            return next(csv.reader(handle), [])
        except csv.Error as error:
            raise WorkloadError(f"{path}:1: invalid CSV header: {error}") from None


def _columns(path: TraceFile, names: Sequence[str]) -> tuple[dict[str, list[str]], list[int]]:
    """Read the named columns of a CSV file as strings, and the line number of every row."""
    columns: dict[str, list[str]] = {name: [] for name in names}
    lines: list[int] = []
    with _reading(path) as handle:
        reader = csv.DictReader(handle)
        try:
            missing = [name for name in names if name not in (reader.fieldnames or [])]
            if missing:
                raise WorkloadError(f"{path}: missing columns {missing}")
            for row in reader:
                for name in names:
                    columns[name].append(row[name] or "")
                lines.append(reader.line_num)
        except csv.Error as error:
            raise WorkloadError(
                f"{path}:{reader.line_num + 1}: invalid CSV: {error}; is this a CSV trace?"
            ) from None
    return columns, lines


def _floats(
    path: TraceFile,
    name: str,
    values: list[str],
    lines: Sequence[int],
    *,
    minimum: float | None = None,
) -> npt.NDArray[np.float64]:
    """Convert a column to finite floats of at least ``minimum``; raise ``WorkloadError``
    naming the first bad line."""
    try:
        numbers = np.asarray(values, dtype=np.float64)
    except ValueError:
        for index, value in enumerate(values):
            try:
                float(value)
            except ValueError:
                raise WorkloadError(f"{path}:{lines[index]}: invalid {name} {value!r}") from None
        raise
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(numbers) | (numbers < (-math.inf if minimum is None else minimum))
    if np.any(bad):
        index = int(np.argmax(bad))
        need = "a finite number" if minimum is None else f"a finite number >= {minimum:g}"
        raise WorkloadError(f"{path}:{lines[index]}: invalid {name} {values[index]!r}; need {need}")
    return numbers


def _token_counts(
    path: TraceFile, name: str, values: list[str], lines: Sequence[int]
) -> npt.NDArray[np.int64]:
    numbers = _floats(path, name, values, lines, minimum=0)
    bad = (numbers > MAX_TOKENS) | (numbers != np.floor(numbers))
    if np.any(bad):
        index = int(np.argmax(bad))
        raise WorkloadError(
            f"{path}:{lines[index]}: invalid {name} {values[index]!r}; need a whole number of "
            f"tokens from 0 to {MAX_TOKENS:,}"
        )
    return numbers.astype(np.int64)


def _check_span(path: TraceFile, span_s: float, first_line: int, last_line: int) -> None:
    if span_s > MAX_SPAN_S:
        raise WorkloadError(
            f"{path}: the trace spans {span_s / 86400:,.1f} days, from line {first_line} to line "
            f"{last_line}; a replay simulates every second and covers at most "
            f"{MAX_SPAN_S / 86400:.0f} days. Check those lines for a wrong timestamp, or pass "
            "--duration SECONDS to replay the start of the trace"
        )


def _requests(
    path: TraceFile,
    arrival_s: npt.NDArray[np.float64],
    lines: Sequence[int],
    until_s: float | None,
    *,
    input_tokens: npt.NDArray[np.int64] | None = None,
    output_tokens: npt.NDArray[np.int64] | None = None,
    service_s: npt.NDArray[np.float64] | None = None,
) -> Workload:
    """Build a workload from unsorted request columns, shifted to start at 0 s and cut at
    ``until_s``."""
    if arrival_s.size == 0:
        raise WorkloadError(f"{path}: the trace has no requests")
    order = np.argsort(arrival_s, kind="stable")
    arrivals = arrival_s[order] - arrival_s[order[0]]
    if until_s is not None:
        kept = int(np.searchsorted(arrivals, until_s, side="left"))
        order, arrivals = order[:kept], arrivals[:kept]
    _check_span(path, float(arrivals[-1]), lines[order[0]], lines[order[-1]])
    duration = float(np.ceil(arrivals[-1]))
    return Workload(
        name=path.stem,
        arrival_s=arrivals,
        duration_s=duration if until_s is None else min(duration, until_s),
        input_tokens=None if input_tokens is None else input_tokens[order],
        output_tokens=None if output_tokens is None else output_tokens[order],
        service_s=None if service_s is None else service_s[order],
    )


def _azure_nanoseconds(
    path: TraceFile, stamps: list[str], lines: Sequence[int]
) -> npt.NDArray[np.int64]:
    """Parse Azure TIMESTAMP values into nanoseconds since the epoch, in UTC."""
    naive: list[str] = []
    offsets_min = np.zeros(len(stamps), dtype=np.int64)
    for index, stamp in enumerate(stamps):
        match = _ISO_DATETIME.fullmatch(stamp.strip())
        if match is None:
            raise WorkloadError(
                f"{path}:{lines[index]}: invalid TIMESTAMP {stamp!r}; need an ISO 8601 date and "
                "time such as 2023-11-16 18:15:46.68 (an optional UTC offset such as +00:00)"
            )
        date, clock, _, sign, hours, minutes = match.groups()
        naive.append(f"{date}T{clock}")
        if sign is not None:
            offset = int(hours) * 60 + int(minutes)
            offsets_min[index] = -offset if sign == "-" else offset
    try:
        parsed = np.array(naive, dtype="datetime64[ns]")
    except ValueError:
        for index, text in enumerate(naive):
            try:
                np.datetime64(text, "ns")
            except ValueError:
                raise WorkloadError(
                    f"{path}:{lines[index]}: invalid TIMESTAMP {stamps[index]!r}; the date or "
                    "time is out of range"
                ) from None
        raise
    return parsed.astype(np.int64) - offsets_min * 60_000_000_000


def _load_azure_llm(path: TraceFile, until_s: float | None) -> Workload:
    data, lines = _columns(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    if not lines:
        raise WorkloadError(f"{path}: the trace has no requests")
    nanoseconds = _azure_nanoseconds(path, data["TIMESTAMP"], lines)
    seconds = (nanoseconds - nanoseconds.min()) / 1e9
    return _requests(
        path,
        seconds,
        lines,
        until_s,
        input_tokens=_token_counts(path, "ContextTokens", data["ContextTokens"], lines),
        output_tokens=_token_counts(path, "GeneratedTokens", data["GeneratedTokens"], lines),
    )


def _json_number(record: dict[str, object], key: str, *, whole: bool) -> float:
    """Return ``record[key]`` as a finite float (a whole one when ``whole``), else raise
    ``ValueError`` naming the key and value."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} {value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{key} {value!r} is not a finite number >= 0") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{key} {value!r} is not a finite number >= 0")
    if whole and (number != math.floor(number) or number > MAX_TOKENS):
        raise ValueError(f"{key} {value!r} is not a whole number of tokens up to {MAX_TOKENS:,}")
    return number


def _load_mooncake(path: TraceFile, until_s: float | None) -> Workload:
    rows: list[tuple[float, float, float]] = []
    lines: list[int] = []
    with _reading(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise TypeError(f"found {type(record).__name__}")
                rows.append(
                    (
                        _json_number(record, "timestamp", whole=False) / 1000.0,
                        _json_number(record, "input_length", whole=True),
                        _json_number(record, "output_length", whole=True),
                    )
                )
            # json.loads raises RecursionError for nesting deeper than the interpreter's stack.
            except (ValueError, KeyError, TypeError, RecursionError) as error:
                raise WorkloadError(
                    f"{path}:{line_number}: expected a JSON object with timestamp (ms), "
                    f"input_length and output_length: {error}"
                ) from None
            lines.append(line_number)
    columns = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return _requests(
        path,
        columns[:, 0],
        lines,
        until_s,
        input_tokens=columns[:, 1].astype(np.int64),
        output_tokens=columns[:, 2].astype(np.int64),
    )


def _load_instance_metric(path: TraceFile, seed: int, until_s: float | None) -> Workload:
    header = _read_header(path)
    time_column = _pick(header, _TIME_COLUMNS)
    instance_column = _pick(header, _INSTANCE_COLUMNS)
    if time_column is None or instance_column is None or "value" not in header:
        raise WorkloadError(f"{path}: need a time, an instance and a value column; got {header}")
    data, all_lines = _columns(path, (time_column, instance_column, "value"))
    keep = [i for i, name in enumerate(data[instance_column]) if name not in _NO_INSTANCE]
    lines = [all_lines[i] for i in keep]
    times = _floats(path, time_column, [data[time_column][i] for i in keep], lines)
    values = _floats(path, "value", [data["value"][i] for i in keep], lines, minimum=0)
    if times.size == 0:
        raise WorkloadError(
            f"{path}: no row names an instance; for an endpoint-level series use --format "
            "time-value"
        )
    grid, total, period = endpoint_rate(times, [data[instance_column][i] for i in keep], values)
    duration = float(grid[-1] - grid[0] + period)
    _check_span(
        path,
        duration if until_s is None else min(duration, until_s),
        lines[int(np.argmin(times))],
        lines[int(np.argmax(times))],
    )
    return workload_from_rate(
        path.stem, grid - grid[0], total, duration, seed=seed, until_s=until_s
    )


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


def _load_time_value(path: TraceFile, seed: int, until_s: float | None) -> Workload:
    header = _read_header(path)
    time_column = _pick(header, _TIME_COLUMNS)
    if time_column is None:
        raise WorkloadError(f"{path}: need a time column; got {header}")
    instance_column = _pick(header, _INSTANCE_COLUMNS)
    names = (
        (time_column, "value")
        if instance_column is None
        else (time_column, "value", instance_column)
    )
    data, lines = _columns(path, names)
    if instance_column is not None:
        # Rows of several instances at one time are summands of the endpoint's rate, and this
        # format would read them as successive rates, so such a file is rejected.
        named = next(
            (i for i, name in enumerate(data[instance_column]) if name not in _NO_INSTANCE), None
        )
        if named is not None:
            raise WorkloadError(
                f"{path}:{lines[named]}: column {instance_column!r} names instance "
                f"{data[instance_column][named]!r}, which --format time-value does not read; "
                "pass --format instance-metric to sum the rates of the instances"
            )
    times = _floats(path, time_column, data[time_column], lines)
    values = _floats(path, "value", data["value"], lines, minimum=0)
    if times.size == 0:
        raise WorkloadError(f"{path}: the trace has no rows")
    order = np.argsort(times, kind="stable")
    times, values = times[order] - times[order[0]], values[order]
    gaps = np.diff(times)
    if times.size > 1 and not np.any(gaps > 0):
        raise WorkloadError(
            f"{path}: all {times.size} rows have the same {time_column}; a rate series needs "
            "rows at two or more times"
        )
    # Each rate applies until the next row, and the last one for the median gap between rows.
    period = float(np.median(gaps[gaps > 0])) if times.size > 1 else 1.0
    duration = float(times[-1] + period)
    _check_span(
        path,
        duration if until_s is None else min(duration, until_s),
        lines[int(order[0])],
        lines[int(order[-1])],
    )
    return workload_from_rate(path.stem, times, values, duration, seed=seed, until_s=until_s)


def _load_azure_functions(path: TraceFile, until_s: float | None) -> Workload:
    data, lines = _columns(path, ("end_timestamp", "duration"))
    end = _floats(path, "end_timestamp", data["end_timestamp"], lines)
    duration = _floats(path, "duration", data["duration"], lines, minimum=0)
    return _requests(path, end - duration, lines, until_s, service_s=duration)


def _load_requests(path: TraceFile, until_s: float | None) -> Workload:
    header = _read_header(path)
    if "service_s" in header:
        data, lines = _columns(path, ("arrival_s", "service_s"))
        return _requests(
            path,
            _floats(path, "arrival_s", data["arrival_s"], lines),
            lines,
            until_s,
            service_s=_floats(path, "service_s", data["service_s"], lines, minimum=0),
        )
    data, lines = _columns(path, ("arrival_s", "input_tokens", "output_tokens"))
    return _requests(
        path,
        _floats(path, "arrival_s", data["arrival_s"], lines),
        lines,
        until_s,
        input_tokens=_token_counts(path, "input_tokens", data["input_tokens"], lines),
        output_tokens=_token_counts(path, "output_tokens", data["output_tokens"], lines),
    )

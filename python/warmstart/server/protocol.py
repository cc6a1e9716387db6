"""The ``/v1/stream`` message schema: parsing client frames and building server frames.

Every frame is one JSON object with a ``type``; the schema, with examples, is in
``docs/serve.md``. Parsing never raises for a bad *sample*: each row that fails a check gets a
reject reason and the other rows go on to the engine. A frame that cannot be read as a whole
(invalid JSON, not an object, unknown type, missing or misaligned columns) raises
``FrameError``, which the service answers with an error frame.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from warmstart.engine import Decision, InstanceEvent
from warmstart.server.errors import FrameError

# Reasons the service itself rejects a sample for, before the engine sees it. The engine's own
# reasons are the values of ``RejectReason``.
INVALID_NAME = "invalid_name"
INVALID_VALUE = "invalid_value"
INVALID_TIMESTAMP = "invalid_timestamp"
INVALID_SAMPLE = "invalid_sample"
INVALID_EVENT = "invalid_event"
VALUE_OUT_OF_RANGE = "value_out_of_range"

_NUMBER_TYPES = frozenset((int, float))
_SAMPLE_KEYS = ("endpoint", "metric", "instance", "timestamp_s", "value")
_EVENT_CHOICES = ", ".join(e.value for e in InstanceEvent)

FrameId = int | str | None


@dataclass(slots=True)
class SampleBatch:
    """Samples of one frame in columns, with the rows the service already rejected.

    ``endpoints``, ``metrics`` and ``instances`` are either one name for every row or one name
    per row. ``problems`` maps a row index to its reject reason; those rows are never ingested.
    ``details`` keeps the first offending row and value per reason, for the error frame.
    """

    frame_id: FrameId
    endpoints: str | list[str]
    metrics: str | list[str]
    instances: str | list[str]
    timestamps_s: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    problems: dict[int, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.values.size)

    def reject(self, row: int, reason: str, detail: str) -> None:
        """Mark ``row`` rejected for ``reason`` unless an earlier check already did."""
        if row in self.problems:
            return
        self.problems[row] = reason
        self.details.setdefault(reason, f"row {row}: {detail}")


@dataclass(frozen=True, slots=True)
class InstanceEvents:
    """Lifecycle events of one frame: ``(endpoint, instance, event)`` per valid entry.

    ``rejected`` counts the entries that were not valid by reason, and ``details`` keeps the
    first of them per reason, for the error frame. ``size`` is the number of entries.
    """

    frame_id: FrameId
    events: tuple[tuple[str, str, InstanceEvent], ...]
    rejected: Counter[str] = field(default_factory=Counter)
    details: dict[str, str] = field(default_factory=dict)
    size: int = 0


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe to decisions of ``endpoints`` (None: every endpoint, including later ones)."""

    frame_id: FrameId
    endpoints: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Stop decisions of ``endpoints`` (None: all of them)."""

    frame_id: FrameId
    endpoints: frozenset[str] | None


Message = SampleBatch | InstanceEvents | Subscribe | Unsubscribe


def parse_frame(text: str) -> Message:
    """Parse one text frame; raise ``FrameError`` if the frame as a whole is unusable."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        # ValueError covers JSONDecodeError and also an integer literal of more than 4300
        # digits, which CPython refuses to convert (``sys.get_int_max_str_digits``).
        raise FrameError("invalid_json", f"frame is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise FrameError("invalid_frame", f"frame must be a JSON object, got {_kind(document)}")
    frame_id = document.get("id")
    if frame_id is not None and (isinstance(frame_id, bool) or not isinstance(frame_id, int | str)):
        raise FrameError("invalid_frame", f"id must be an integer or string, got {_kind(frame_id)}")
    kind = document.get("type")
    if kind == "columns":
        return _parse_columns(document, frame_id)
    if kind == "samples":
        return _parse_samples(document, frame_id)
    if kind == "instance_events":
        return _parse_instance_events(document, frame_id)
    if kind in ("subscribe", "unsubscribe"):
        endpoints = _endpoint_set(document.get("endpoints"))
        if kind == "subscribe":
            return Subscribe(frame_id, endpoints)
        return Unsubscribe(frame_id, endpoints)
    raise FrameError(
        "unknown_type",
        f"unknown frame type {short_json(kind)}; expected columns, samples, instance_events, "
        f"subscribe or unsubscribe",
    )


def frame_id_of(text: str) -> FrameId:
    """Return the ``id`` of a frame if it can be found, for replies to unusable frames."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(document, dict):
        frame_id = document.get("id")
        if isinstance(frame_id, int | str) and not isinstance(frame_id, bool):
            return frame_id
    return None


def _parse_columns(document: dict[str, Any], frame_id: FrameId) -> SampleBatch:
    raw_values = document.get("value")
    raw_times = document.get("timestamp_s")
    if not isinstance(raw_values, list):
        raise FrameError("invalid_frame", f"value must be an array, got {_kind(raw_values)}")
    if not isinstance(raw_times, list):
        raise FrameError("invalid_frame", f"timestamp_s must be an array, got {_kind(raw_times)}")
    rows = len(raw_values)
    if len(raw_times) != rows:
        raise FrameError(
            "length_mismatch",
            f"timestamp_s has {len(raw_times)} entries and value has {rows}; they must be equal",
        )
    names = {}
    for key in ("endpoint", "metric", "instance"):
        column = document.get(key)
        if isinstance(column, list):
            if len(column) != rows:
                raise FrameError(
                    "length_mismatch",
                    f"{key} has {len(column)} entries and value has {rows}; they must be equal",
                )
        elif not isinstance(column, str):
            raise FrameError(
                "invalid_frame", f"{key} must be a string or an array, got {_kind(column)}"
            )
        names[key] = column
    batch = SampleBatch(
        frame_id,
        names["endpoint"],
        names["metric"],
        names["instance"],
        np.empty(0),
        np.empty(0),
    )
    batch.timestamps_s = _numbers(raw_times, batch, INVALID_TIMESTAMP, "timestamp_s")
    batch.values = _numbers(raw_values, batch, INVALID_VALUE, "value")
    for key in ("endpoint", "metric", "instance"):
        column = names[key]
        if isinstance(column, str):
            if not column:
                for row in range(rows):
                    batch.reject(row, INVALID_NAME, f"{key} is empty")
        elif not all(type(name) is str and name for name in column):
            for row, name in enumerate(column):
                if type(name) is not str or not name:
                    batch.reject(
                        row,
                        INVALID_NAME,
                        f"{key} must be a non-empty string, got {short_json(name)}",
                    )
    return batch


def _numbers(
    column: list[Any], batch: SampleBatch, reason: str, key: str
) -> npt.NDArray[np.float64]:
    """Convert a JSON array to floats; rows that are not numbers get ``reason`` and NaN."""
    if {type(item) for item in column} <= _NUMBER_TYPES:
        try:
            return np.array(column, dtype=np.float64)
        except OverflowError:
            pass  # an integer beyond float range; the loop below finds the row
    result = np.empty(len(column), dtype=np.float64)
    for row, item in enumerate(column):
        if type(item) not in _NUMBER_TYPES:
            batch.reject(row, reason, f"{key} must be a number, got {short_json(item)}")
            result[row] = math.nan
            continue
        try:
            result[row] = float(item)
        except OverflowError:
            batch.reject(row, VALUE_OUT_OF_RANGE, f"{key} {short_json(item)} is out of range")
            result[row] = math.nan
    return result


def _parse_samples(document: dict[str, Any], frame_id: FrameId) -> SampleBatch:
    samples = document.get("samples")
    if not isinstance(samples, list):
        raise FrameError("invalid_frame", f"samples must be an array, got {_kind(samples)}")
    rows = len(samples)
    endpoints = [""] * rows
    metrics = [""] * rows
    instances = [""] * rows
    batch = SampleBatch(
        frame_id, endpoints, metrics, instances, np.full(rows, np.nan), np.full(rows, np.nan)
    )
    for row, sample in enumerate(samples):
        if not isinstance(sample, dict):
            batch.reject(row, INVALID_SAMPLE, f"sample must be an object, got {_kind(sample)}")
            continue
        missing = [key for key in _SAMPLE_KEYS if key not in sample]
        if missing:
            batch.reject(row, INVALID_SAMPLE, f"missing {', '.join(missing)}")
            continue
        for key, column in (("endpoint", endpoints), ("metric", metrics), ("instance", instances)):
            name = sample[key]
            if type(name) is not str or not name:
                batch.reject(
                    row, INVALID_NAME, f"{key} must be a non-empty string, got {short_json(name)}"
                )
            else:
                column[row] = name
        for key, target, reason in (
            ("timestamp_s", batch.timestamps_s, INVALID_TIMESTAMP),
            ("value", batch.values, INVALID_VALUE),
        ):
            item = sample[key]
            if type(item) not in _NUMBER_TYPES:
                batch.reject(row, reason, f"{key} must be a number, got {short_json(item)}")
                continue
            try:
                target[row] = float(item)
            except OverflowError:
                batch.reject(row, VALUE_OUT_OF_RANGE, f"{key} {short_json(item)} is out of range")
    return batch


def _parse_instance_events(document: dict[str, Any], frame_id: FrameId) -> InstanceEvents:
    raw = document.get("events")
    if not isinstance(raw, list):
        raise FrameError("invalid_frame", f"events must be an array, got {_kind(raw)}")
    events = []
    result = InstanceEvents(frame_id, (), size=len(raw))

    def reject(reason: str, detail: str) -> None:
        result.rejected[reason] += 1
        result.details.setdefault(reason, detail)

    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            reject(INVALID_EVENT, f"events[{index}] must be an object, got {_kind(item)}")
            continue
        endpoint, instance, event = item.get("endpoint"), item.get("instance"), item.get("event")
        if not isinstance(endpoint, str) or not endpoint:
            detail = (
                f"events[{index}].endpoint must be a non-empty string, got {short_json(endpoint)}"
            )
            reject(INVALID_NAME, detail)
            continue
        if not isinstance(instance, str) or not instance:
            detail = (
                f"events[{index}].instance must be a non-empty string, got {short_json(instance)}"
            )
            reject(INVALID_NAME, detail)
            continue
        try:
            events.append((endpoint, instance, InstanceEvent(event)))
        except ValueError:
            reject(
                INVALID_EVENT,
                f"events[{index}].event must be one of {_EVENT_CHOICES}, got {short_json(event)}",
            )
    return dataclasses.replace(result, events=tuple(events))


def _endpoint_set(raw: Any) -> frozenset[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(type(name) is str for name in raw):
        raise FrameError("invalid_frame", "endpoints must be an array of names or null")
    return frozenset(raw)


# -- server frames ---------------------------------------------------------------------------


def ack_frame(frame_id: FrameId, accepted: int, rejected: Counter[str]) -> str:
    """Build the reply to a sample batch: accepted count and rejected count per reason."""
    return json.dumps(
        {"type": "ack", "id": frame_id, "accepted": accepted, "rejected": dict(rejected)}
    )


def error_frame(frame_id: FrameId, code: str, message: str, **extra: Any) -> str:
    """Build an error frame; the connection stays open after it."""
    return json.dumps({"type": "error", "id": frame_id, "code": code, "message": message, **extra})


def decision_document(decision: Decision, seq: int, wall_time_s: float) -> dict[str, Any]:
    """Return a decision as JSON-ready data: ``at`` is engine clock seconds, ``time`` Unix s."""
    return {
        "seq": seq,
        "endpoint": decision.endpoint,
        "at": decision.at,
        "time": wall_time_s,
        "current": decision.current,
        "desired": decision.desired,
        "direction": decision.direction,
        "policy": decision.policy,
        "reason": decision.reason,
        "stages": [
            {"name": stage.name, "value": stage.value, "note": stage.note}
            for stage in decision.stages
        ],
    }


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def short_json(value: Any) -> str:
    """Return a JSON rendering of ``value`` cut to 40 characters, for error messages."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

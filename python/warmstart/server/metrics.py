"""The ``/metrics`` page in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

from collections.abc import Iterable

from warmstart.engine import Engine, UnknownEndpointError
from warmstart.server.hub import Hub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(hub: Hub) -> str:
    """Render every service and engine metric."""
    counters = hub.counters
    engine: Engine = hub.engine
    lines: list[str] = []
    _family(
        lines,
        "warmstart_samples_accepted_total",
        "counter",
        "Samples the engine accepted over websockets.",
        [("", counters.samples_accepted)],
    )
    _family(
        lines,
        "warmstart_samples_rejected_total",
        "counter",
        "Samples rejected, by reason.",
        [(_labels(reason=r), n) for r, n in sorted(counters.samples_rejected.items())],
    )
    _family(
        lines,
        "warmstart_frames_rejected_total",
        "counter",
        "Websocket frames answered with an error frame, by error code.",
        [(_labels(code=c), n) for c, n in sorted(counters.frames_rejected.items())],
    )
    _family(
        lines,
        "warmstart_decisions_total",
        "counter",
        "Decisions emitted by the engine, by endpoint.",
        [(_labels(endpoint=e), n) for e, n in sorted(counters.decisions.items())],
    )
    _family(
        lines,
        "warmstart_decisions_dropped_total",
        "counter",
        "Decisions not sent to a subscriber that fell behind.",
        [("", counters.decisions_dropped)],
    )
    current = []
    desired = []
    for name in engine.endpoints:
        try:
            state = engine.state(name)
        except UnknownEndpointError:
            continue  # removed between listing and reading
        current.append((_labels(endpoint=name), state.current))
        desired.append((_labels(endpoint=name), state.desired))
    _family(
        lines,
        "warmstart_capacity_current",
        "gauge",
        "Capacity the next evaluation starts from (ready plus pending instances).",
        current,
    )
    _family(lines, "warmstart_capacity_desired", "gauge", "Last decided capacity.", desired)
    _family(
        lines,
        "warmstart_connected_clients",
        "gauge",
        "Open websocket connections.",
        [("", len(hub.connections))],
    )
    _family(
        lines,
        "warmstart_connections_total",
        "counter",
        "Websocket connections accepted.",
        [("", counters.connections_opened)],
    )
    _family(
        lines,
        "warmstart_ingest_waits_total",
        "counter",
        "Batches that waited for room in the full ingest queue.",
        [("", counters.ingest_waits)],
    )
    _family(
        lines,
        "warmstart_unauthorized_requests_total",
        "counter",
        "Requests rejected with 401.",
        [("", counters.unauthorized)],
    )
    return "\n".join(lines) + "\n"


def _family(
    lines: list[str], name: str, kind: str, help_text: str, samples: Iterable[tuple[str, int]]
) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    lines.extend(f"{name}{labels} {value}" for labels, value in samples)


def _labels(**labels: str) -> str:
    body = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

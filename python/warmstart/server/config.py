"""The ``warmstart serve`` TOML configuration and the endpoint documents of the HTTP API.

An endpoint is described by the same table in the TOML file (``[endpoints.NAME]``) and in the
JSON body of ``PUT /v1/endpoints/NAME``, so ``endpoint_spec`` validates both. Every error names
the key path and the rejected value, for example ``endpoints.llm.policies[0].target: must be a
number, got "eight"``. The format is documented with a full example in ``docs/serve.md``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmstart.engine import (
    PRESETS,
    Aggregation,
    Behavior,
    Burst,
    EndpointSpec,
    EngineConfigError,
    IngestConfig,
    MetricSpec,
    Policy,
    Predictive,
    RateKind,
    RatePolicy,
    ScalingRules,
    SelectPolicy,
    Step,
    StepScaling,
    TargetTracking,
    preset,
)
from warmstart.engine.presets import HPA_BEHAVIOR, KNATIVE_BEHAVIOR, SAGEMAKER_BEHAVIOR
from warmstart.server.errors import ConfigError

POLICY_TYPES: dict[str, type[Policy]] = {
    "target_tracking": TargetTracking,
    "step_scaling": StepScaling,
    "burst": Burst,
    "predictive": Predictive,
}
BEHAVIOR_PRESETS = {
    "hpa": HPA_BEHAVIOR,
    "knative": KNATIVE_BEHAVIOR,
    "sagemaker": SAGEMAKER_BEHAVIOR,
}


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Limits and options of the service; every duration is in seconds.

    ``max_frame_bytes``: a larger text frame is answered with an error frame and skipped; a
    frame over four times this size is a protocol violation and closes the socket with 1009.
    ``ingest_queue_batches``: parsed batches waiting for the engine, across all connections;
    when the queue is full, connections stop being read. ``max_unanswered_frames``: frames of
    one connection whose reply is not yet sent; at this limit that connection stops being read.
    ``subscriber_queue``: decisions queued per subscribed socket before the oldest is dropped.
    ``decision_history``: decisions kept per endpoint for ``GET .../decisions``.
    ``send_timeout_s``: how long one frame to a client may wait for the client to read it
    before the connection is aborted.
    """

    max_frame_bytes: int = 1 << 20
    ingest_queue_batches: int = 64
    max_unanswered_frames: int = 32
    subscriber_queue: int = 256
    decision_history: int = 1000
    shutdown_timeout_s: float = 10.0
    heartbeat_s: float | None = 30.0
    send_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in (
            "max_frame_bytes",
            "ingest_queue_batches",
            "max_unanswered_frames",
            "subscriber_queue",
            "decision_history",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"server.{name}: must be a positive integer, got {value!r}")
        for name in ("shutdown_timeout_s", "send_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"server.{name}: must be positive seconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """A parsed configuration file: where to listen, limits, ingest checks and endpoints.

    ``documents`` keeps each endpoint's table as written, which ``GET /v1/endpoints/NAME``
    returns.
    """

    listen: str | None = None
    token_file: Path | None = None
    settings: ServerSettings = field(default_factory=ServerSettings)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    endpoints: tuple[EndpointSpec, ...] = ()
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_config(path: Path) -> ServeConfig:
    """Read and validate a TOML configuration file; raise ``ConfigError`` naming the key."""
    try:
        with path.open("rb") as file:
            raw = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from error
    try:
        return parse_config(raw, base=path.parent)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def parse_config(raw: Mapping[str, Any], base: Path | None = None) -> ServeConfig:
    """Validate a configuration document already parsed from TOML or JSON."""
    _only(raw, "", {"server", "ingest", "endpoints"})
    server = _table(raw, "server")
    _only(server, "server", {"listen", "token_file"} | _field_names(ServerSettings))
    listen = _optional(server, "server.listen", str)
    token_file = _optional(server, "server.token_file", str)
    settings_args = {k: v for k, v in server.items() if k not in ("listen", "token_file")}
    for key in ("shutdown_timeout_s", "heartbeat_s", "send_timeout_s"):
        if key in settings_args:
            settings_args[key] = _number(settings_args, key, f"server.{key}")
    settings = ServerSettings(**settings_args)

    ingest_table = _table(raw, "ingest")
    _only(ingest_table, "ingest", _field_names(IngestConfig))
    try:
        ingest = IngestConfig(**_converted(IngestConfig, ingest_table, "ingest"))
    except ValueError as error:
        raise ConfigError(f"ingest: {error}") from error

    endpoints = _table(raw, "endpoints")
    specs = []
    documents = {}
    for name, document in endpoints.items():
        if not isinstance(document, Mapping):
            raise ConfigError(f"endpoints.{name}: must be a table, got {document!r}")
        specs.append(endpoint_spec(name, document))
        documents[name] = dict(document)
    token_path = None
    if token_file is not None:
        token_path = Path(token_file)
        if base is not None and not token_path.is_absolute():
            token_path = base / token_path
    return ServeConfig(listen, token_path, settings, ingest, tuple(specs), documents)


def endpoint_spec(name: str, document: Mapping[str, Any]) -> EndpointSpec:
    """Build the ``EndpointSpec`` an endpoint table describes; raise ``ConfigError``.

    Two forms: ``preset = "hpa"`` with ``metric`` and ``target`` (and optionally
    ``min_capacity``, ``max_capacity``, ``aggregation``, ``time_to_ready_s``), or explicit
    ``metrics``, ``policies`` and an optional ``behavior``.
    """
    where = f"endpoints.{name}"
    if not name or not isinstance(name, str):
        raise ConfigError(f"{where}: endpoint name must be a non-empty string")
    try:
        if "preset" in document:
            return _preset_spec(name, document, where)
        return _explicit_spec(name, document, where)
    except EngineConfigError as error:
        raise ConfigError(f"{where}: {error}") from error


def _preset_spec(name: str, document: Mapping[str, Any], where: str) -> EndpointSpec:
    allowed = {"preset", "metric", "target", "min_capacity", "max_capacity"}
    _only(document, where, allowed | {"aggregation", "time_to_ready_s", "instance_timeout_s"})
    chosen = document["preset"]
    if chosen not in PRESETS:
        raise ConfigError(f"{where}.preset: must be one of {', '.join(PRESETS)}, got {chosen!r}")
    metric = _required(document, "metric", where, str)
    target = _number(document, "target", f"{where}.target", required=True)
    aggregation = _enum_value(Aggregation, document.get("aggregation", "sum"), where)
    return preset(
        chosen,
        endpoint=name,
        metric=metric,
        target=target,
        min_capacity=_optional(document, f"{where}.min_capacity", int, "min_capacity"),
        max_capacity=_optional(document, f"{where}.max_capacity", int, "max_capacity") or 100,
        aggregation=aggregation,
        time_to_ready_s=_number(document, "time_to_ready_s", f"{where}.time_to_ready_s"),
        instance_timeout_s=_instance_timeout(document, where),
    )


def _explicit_spec(name: str, document: Mapping[str, Any], where: str) -> EndpointSpec:
    allowed = {"metrics", "policies", "behavior"} | _field_names(EndpointSpec)
    _only(document, where, allowed - {"name"})
    metrics_raw = _required(document, "metrics", where, list)
    policies_raw = _required(document, "policies", where, list)
    metrics = tuple(
        MetricSpec(
            **_converted(MetricSpec, _item(m, f"{where}.metrics[{i}]"), f"{where}.metrics[{i}]")
        )
        for i, m in enumerate(metrics_raw)
    )
    policies = tuple(_policy(p, f"{where}.policies[{i}]") for i, p in enumerate(policies_raw))
    scalars = {k: v for k, v in document.items() if k not in ("metrics", "policies", "behavior")}
    arguments = _converted(EndpointSpec, scalars, where, skip={"instance_timeout_s"})
    arguments["instance_timeout_s"] = _instance_timeout(document, where)
    behavior = (
        _behavior(document["behavior"], f"{where}.behavior")
        if "behavior" in document
        else Behavior()
    )
    return EndpointSpec(name, metrics, policies, behavior=behavior, **arguments)


def _policy(raw: Any, where: str) -> Policy:
    table = _item(raw, where)
    kind = table.get("type")
    cls = POLICY_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(f"{where}.type: must be one of {', '.join(POLICY_TYPES)}, got {kind!r}")
    rest = {k: v for k, v in table.items() if k != "type"}
    _only(rest, where, _field_names(cls))
    if cls is StepScaling and "steps" in rest:
        rest["steps"] = tuple(
            _step(s, f"{where}.steps[{i}]") for i, s in enumerate(_list(rest, "steps", where))
        )
    arguments = _converted(cls, rest, where, skip={"steps"})
    if "steps" in rest:
        arguments["steps"] = rest["steps"]
    try:
        return cls(**arguments)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from error


def _step(raw: Any, where: str) -> Step:
    table = _item(raw, where)
    _only(table, where, {"lower", "upper", "adjustment"})
    return Step(
        _number(table, "lower", f"{where}.lower"),
        _number(table, "upper", f"{where}.upper"),
        _number(table, "adjustment", f"{where}.adjustment", required=True),
    )


def _behavior(raw: Any, where: str) -> Behavior:
    table = _item(raw, where)
    _only(table, where, {"preset"} | _field_names(Behavior))
    base = Behavior()
    if "preset" in table:
        chosen = table["preset"]
        if chosen not in BEHAVIOR_PRESETS:
            raise ConfigError(
                f"{where}.preset: must be one of {', '.join(BEHAVIOR_PRESETS)}, got {chosen!r}"
            )
        base = BEHAVIOR_PRESETS[chosen]
    changes: dict[str, Any] = {}
    for direction, default in (("scale_up", base.scale_up), ("scale_down", base.scale_down)):
        if direction in table:
            changes[direction] = _rules(table[direction], f"{where}.{direction}", default)
    for key in ("tolerance", "restart_hold_s", "scale_to_zero_after_s"):
        if key in table:
            changes[key] = _number(table, key, f"{where}.{key}")
    return dataclasses.replace(base, **changes)


def _rules(raw: Any, where: str, base: ScalingRules) -> ScalingRules:
    table = _item(raw, where)
    _only(table, where, _field_names(ScalingRules))
    changes: dict[str, Any] = {}
    for key in ("stabilization_window_s", "cooldown_s"):
        if key in table:
            changes[key] = _number(table, key, f"{where}.{key}", required=True)
    if "select" in table:
        changes["select"] = _enum_value(SelectPolicy, table["select"], f"{where}.select")
    if "policies" in table:
        rates = []
        for index, item in enumerate(_list(table, "policies", where)):
            place = f"{where}.policies[{index}]"
            rate = _item(item, place)
            _only(rate, place, {"kind", "value", "period_s"})
            rates.append(
                RatePolicy(
                    _enum_value(RateKind, rate.get("kind"), f"{place}.kind"),
                    _number(rate, "value", f"{place}.value", required=True),
                    _number(rate, "period_s", f"{place}.period_s", required=True),
                )
            )
        changes["policies"] = tuple(rates)
    return dataclasses.replace(base, **changes)


# -- small validators ------------------------------------------------------------------------


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _only(table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            place = f"{where}.{key}" if where else key
            raise ConfigError(f"{place}: unknown key; expected one of {', '.join(sorted(allowed))}")


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a table, got {value!r}")
    return value


def _item(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table, got {raw!r}")
    return dict(raw)


def _list(table: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = table[key]
    if not isinstance(value, list):
        raise ConfigError(f"{where}.{key}: must be an array, got {value!r}")
    return value


def _required(table: Mapping[str, Any], key: str, where: str, kind: type) -> Any:
    if key not in table:
        raise ConfigError(f"{where}.{key}: missing")
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}.{key}: must be {_kind_name(kind)}, got {value!r}")
    return value


def _optional(table: Mapping[str, Any], where: str, kind: type, key: str | None = None) -> Any:
    key = key if key is not None else where.rsplit(".", 1)[-1]
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}: must be {_kind_name(kind)}, got {value!r}")
    return value


def _number(table: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> Any:
    if key not in table:
        if required:
            raise ConfigError(f"{where}: missing")
        return None
    value = table[key]
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: must be finite, got {value!r}")
    return float(value)


def _instance_timeout(table: Mapping[str, Any], where: str) -> float | None:
    """Read ``instance_timeout_s``, the one duration that may be ``inf`` (never time out)."""
    value = table.get("instance_timeout_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"{where}.instance_timeout_s: must be a number of seconds, or inf to never time out "
            f"silent instances, got {value!r}"
        )
    return float(value)


def _enum_value(cls: type[enum.Enum], value: Any, where: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(str(member.value) for member in cls)
        raise ConfigError(f"{where}: must be one of {choices}, got {value!r}") from None


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        kind, "an array" if kind is list else kind.__name__
    )


def _converted(
    cls: type, table: Mapping[str, Any], where: str, skip: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    """Check each value of ``table`` against the type of the field of ``cls`` it sets."""
    hints = typing.get_type_hints(cls)
    result: dict[str, Any] = {}
    for key, value in table.items():
        if key in skip:
            continue
        hint = hints[key]
        place = f"{where}.{key}"
        result[key] = _convert(hint, value, place)
    return result


def _convert(hint: Any, value: Any, where: str) -> Any:
    options = (
        typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UNION) else (hint,)
    )
    if value is None and type(None) in options:
        return None
    for option in options:
        if isinstance(option, type) and issubclass(option, enum.Enum):
            return _enum_value(option, value, where)
        if option is bool:
            if isinstance(value, bool):
                return value
        elif option is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif option is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise ConfigError(f"{where}: must be finite, got {value!r}")
                return float(value)
        elif option is str and isinstance(value, str):
            return value
    names = " or ".join(_kind_name(o) for o in options if o is not type(None))
    raise ConfigError(f"{where}: must be {names}, got {value!r}")


_UNION = type(int | None)

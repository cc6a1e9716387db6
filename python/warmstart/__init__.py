"""warmstart: autoscaling for ML inference fleets with fast, verified image pulls."""

from typing import TYPE_CHECKING, Any

from warmstart import errors
from warmstart._native import (
    BlobInfo,
    BlobReport,
    Descriptor,
    GcReport,
    ImportReport,
    LayerReport,
    ManifestReport,
    Problem,
    PullProgress,
    PullReport,
    UnpackReport,
    Usage,
    VerifyReport,
)
from warmstart._native import __version__ as __version__
from warmstart.store import LayerStore

if TYPE_CHECKING:
    from warmstart.engine import (
        PRESETS,
        STAGES,
        AdjustmentType,
        Aggregation,
        Behavior,
        Burst,
        Capacity,
        Clock,
        Decision,
        EndpointSpec,
        EndpointState,
        Engine,
        EngineClosedError,
        EngineConfigError,
        EngineError,
        FakeClock,
        IngestConfig,
        InstanceEvent,
        MetricKind,
        MetricSpec,
        MonotonicClock,
        Observation,
        Policy,
        PolicyInputs,
        Predictive,
        RateKind,
        RatePolicy,
        Recommendation,
        RejectReason,
        Sample,
        ScalingRules,
        SelectPolicy,
        Stage,
        Statistic,
        Step,
        StepScaling,
        TargetTracking,
        UnknownEndpointError,
        WallClock,
        WindowQuery,
        preset,
    )

__all__ = [
    "PRESETS",
    "STAGES",
    "AdjustmentType",
    "Aggregation",
    "Behavior",
    "BlobInfo",
    "BlobReport",
    "Burst",
    "Capacity",
    "Clock",
    "Decision",
    "Descriptor",
    "EndpointSpec",
    "EndpointState",
    "Engine",
    "EngineClosedError",
    "EngineConfigError",
    "EngineError",
    "FakeClock",
    "GcReport",
    "ImportReport",
    "IngestConfig",
    "InstanceEvent",
    "LayerReport",
    "LayerStore",
    "ManifestReport",
    "MetricKind",
    "MetricSpec",
    "MonotonicClock",
    "Observation",
    "Policy",
    "PolicyInputs",
    "Predictive",
    "Problem",
    "PullProgress",
    "PullReport",
    "RateKind",
    "RatePolicy",
    "Recommendation",
    "RejectReason",
    "Sample",
    "ScalingRules",
    "SelectPolicy",
    "Stage",
    "Statistic",
    "Step",
    "StepScaling",
    "TargetTracking",
    "UnknownEndpointError",
    "UnpackReport",
    "Usage",
    "VerifyReport",
    "WallClock",
    "WindowQuery",
    "errors",
    "preset",
]

# The engine's names load on first use (PEP 562), because the engine pulls in numpy and a
# command that only pulls an image should not pay for it.
_ENGINE_NAMES = frozenset(__all__) - frozenset(globals())


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from warmstart import engine

        value = getattr(engine, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'warmstart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(frozenset(globals()) | _ENGINE_NAMES)

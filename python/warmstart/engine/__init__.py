"""The asyncio scaling engine: metric windows, policies, behavior and decisions.

Pure Python and numpy; it does not use the layer store.
"""

from warmstart.engine.aggregate import Aggregation, Observation, WindowQuery
from warmstart.engine.behavior import (
    Behavior,
    RateKind,
    RatePolicy,
    ScalingRules,
    SelectPolicy,
)
from warmstart.engine.clock import Clock, FakeClock, MonotonicClock, WallClock
from warmstart.engine.decision import STAGES, Decision, Stage
from warmstart.engine.engine import EndpointState, Engine
from warmstart.engine.errors import (
    EngineClosedError,
    EngineConfigError,
    EngineError,
    TooManySeriesError,
    UnknownEndpointError,
)
from warmstart.engine.instances import InstanceEvent
from warmstart.engine.policy import (
    AdjustmentType,
    Burst,
    Capacity,
    Policy,
    PolicyInputs,
    Predictive,
    Recommendation,
    Step,
    StepScaling,
    TargetTracking,
)
from warmstart.engine.presets import PRESETS, preset
from warmstart.engine.samples import RejectReason, Sample
from warmstart.engine.series import IngestConfig
from warmstart.engine.spec import EndpointSpec, MetricKind, MetricSpec
from warmstart.engine.window import Statistic

__all__ = [
    "PRESETS",
    "STAGES",
    "AdjustmentType",
    "Aggregation",
    "Behavior",
    "Burst",
    "Capacity",
    "Clock",
    "Decision",
    "EndpointSpec",
    "EndpointState",
    "Engine",
    "EngineClosedError",
    "EngineConfigError",
    "EngineError",
    "FakeClock",
    "IngestConfig",
    "InstanceEvent",
    "MetricKind",
    "MetricSpec",
    "MonotonicClock",
    "Observation",
    "Policy",
    "PolicyInputs",
    "Predictive",
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
    "TooManySeriesError",
    "UnknownEndpointError",
    "WallClock",
    "WindowQuery",
    "preset",
]

"""Built-in scaling policies; several policies on one endpoint combine by max."""

from warmstart.engine.policy.base import Capacity, Policy, PolicyInputs, Recommendation
from warmstart.engine.policy.burst import Burst, BurstState
from warmstart.engine.policy.predictive import LoadHistory, Predictive
from warmstart.engine.policy.step import AdjustmentType, Step, StepScaling
from warmstart.engine.policy.target_tracking import TargetTracking

__all__ = [
    "AdjustmentType",
    "Burst",
    "BurstState",
    "Capacity",
    "LoadHistory",
    "Policy",
    "PolicyInputs",
    "Predictive",
    "Recommendation",
    "Step",
    "StepScaling",
    "TargetTracking",
]

"""Table tests: each preset against worked examples from its system's documentation."""

from __future__ import annotations

import pytest

from warmstart.engine import (
    PRESETS,
    Aggregation,
    Burst,
    Engine,
    EngineConfigError,
    FakeClock,
    TargetTracking,
    preset,
)

from .helpers import START


def run_constant(spec, per_instance_loads, seconds, instances):
    """Feed each instance its load every second; return every decision."""
    clock = FakeClock(START)
    engine = Engine([spec], clock=clock)
    decisions = []
    for second in range(seconds):
        load = per_instance_loads(second)
        for index in range(instances):
            engine.ingest(spec.name, "m", f"i{index}", clock.now(), load)
        decisions += engine.tick()
        clock.advance(1.0)
    return decisions


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds(name):
    spec = preset(name, endpoint="e", metric="m", target=10.0)
    assert spec.policies


def test_unknown_preset_raises():
    with pytest.raises(EngineConfigError, match="unknown preset"):
        preset("nope", endpoint="e", metric="m", target=1.0)


@pytest.mark.parametrize(
    ("name", "interval_s"),
    [("hpa", 15.0), ("knative", 2.0), ("sagemaker", 60.0), ("sagemaker-hires", 10.0)],
)
def test_preset_evaluation_interval(name, interval_s):
    assert preset(name, endpoint="e", metric="m", target=1.0).interval_s == interval_s


def test_hpa_defaults_match_kubernetes():
    spec = preset("hpa", endpoint="e", metric="m", target=1.0)
    behavior = spec.behavior
    assert behavior.tolerance == 0.1
    assert behavior.scale_down.stabilization_window_s == 300.0
    assert behavior.scale_up.stabilization_window_s == 0.0
    assert {(p.kind.value, p.value, p.period_s) for p in behavior.scale_up.policies} == {
        ("percent", 100, 15),
        ("pods", 4, 15),
    }


def test_hpa_doubles_replicas_at_twice_the_target():
    # Kubernetes: 200m observed against a 100m target doubles the replicas.
    spec = preset(
        "hpa",
        endpoint="e",
        metric="m",
        target=0.1,
        aggregation=Aggregation.MEAN,
        min_capacity=3,
    )
    decisions = run_constant(spec, lambda s: 0.2, 20, instances=3)
    assert decisions[0].desired == 6


def test_hpa_skips_scaling_within_tolerance():
    spec = preset(
        "hpa",
        endpoint="e",
        metric="m",
        target=0.1,
        aggregation=Aggregation.MEAN,
        min_capacity=1,
        max_capacity=10,
    )
    decisions = run_constant(spec, lambda s: 0.105, 20, instances=1)
    assert decisions[0].desired == 1
    assert decisions[0].stage("raw").value == 2
    assert "within 10%" in decisions[0].reason


def test_hpa_waits_300s_before_scale_down():
    spec = preset("hpa", endpoint="e", metric="m", target=10.0, min_capacity=1)
    decisions = run_constant(spec, lambda s: 20.0 if s < 30 else 2.0, 400, instances=2)
    peak_at = max(d.at for d in decisions if d.desired == 4)
    assert 300.0 <= peak_at - (START + 15.0) < 330.0
    assert decisions[-1].desired == 1


def test_knative_defaults():
    spec = preset("knative", endpoint="e", metric="m", target=70.0)
    (policy,) = spec.policies
    assert isinstance(policy, Burst)
    assert (policy.stable_window_s, policy.panic_window_s, policy.panic_threshold) == (
        60.0,
        6.0,
        2.0,
    )
    assert spec.min_capacity == 0


def test_knative_hundred_requests_at_seventy_percent_of_ten():
    # Knative: container concurrency 10 at 70 % target utilization, 100 requests -> 15 pods.
    spec = preset("knative", endpoint="e", metric="m", target=7.0, min_capacity=1)
    decisions = run_constant(spec, lambda s: 50.0, 10, instances=2)
    assert decisions[-1].desired == 15


def test_knative_panics_within_seconds_of_a_burst():
    spec = preset("knative", endpoint="e", metric="m", target=10.0, min_capacity=1)
    # Within one 6 s panic window of the burst, capacity reaches the full 200 / 10.
    decisions = run_constant(spec, lambda s: 10.0 if s < 70 else 100.0, 77, instances=2)
    burst = [d for d in decisions if d.at >= START + 70]
    assert burst[0].direction == "up"
    assert "entering panic" in burst[0].reason
    assert burst[-1].desired >= 20


def test_sagemaker_target_tracking_on_sixty_second_metric():
    spec = preset("sagemaker", endpoint="e", metric="m", target=70.0, min_capacity=1)
    (policy,) = spec.policies
    assert isinstance(policy, TargetTracking)
    assert policy.window_s == 60.0
    assert spec.behavior.scale_down.cooldown_s == 300.0


def test_sagemaker_scale_in_waits_for_cooldown():
    spec = preset("sagemaker", endpoint="e", metric="m", target=70.0, min_capacity=1)
    decisions = run_constant(spec, lambda s: 140.0 if s < 120 else 10.0, 600, instances=2)
    up = next(d for d in decisions if d.direction == "up")
    down = next(d for d in decisions if d.direction == "down")
    assert up.desired == 4
    assert down.at - up.at >= 300.0


def test_sagemaker_hires_detects_scale_out_sooner():
    def first_scale_out(name):
        spec = preset(name, endpoint="e", metric="m", target=70.0, min_capacity=1)
        decisions = run_constant(spec, lambda s: 10.0 if s < 125 else 140.0, 400, instances=2)
        return next(d.at for d in decisions if d.direction == "up") - (START + 125)

    standard = first_scale_out("sagemaker")
    hires = first_scale_out("sagemaker-hires")
    assert hires <= 10.0
    assert standard > hires

"""The fleet simulation against hand-computed runs, and invariants over random workloads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.replay.conftest import small_profile
from warmstart.engine import Behavior, EndpointSpec, MetricSpec, ScalingRules, TargetTracking
from warmstart.replay import CacheMode, FleetOptions, Workload, policy_spec, simulate
from warmstart.replay.fleet import METRIC
from warmstart.replay.policies import POLICIES
from warmstart.replay.results import summarize

IMMEDIATE = ScalingRules(0.0, ())
IMMEDIATE_BEHAVIOR = Behavior(scale_up=IMMEDIATE, scale_down=IMMEDIATE, tolerance=0.0)
NO_WARMUP = FleetOptions(warmup_s=0.0)


def reactive_spec() -> EndpointSpec:
    """Track total concurrency at 1 per instance, every second, with no damping at all."""
    return EndpointSpec(
        "burst",
        (MetricSpec(METRIC),),
        (TargetTracking(METRIC, 1.0, window_s=1.0),),
        min_capacity=1,
        max_capacity=10,
        behavior=IMMEDIATE_BEHAVIOR,
        interval_s=1.0,
    )


def burst(arrival_s: float = 100.0, service_s: float = 50.0, duration_s: float = 200.0) -> Workload:
    """Three requests at once, each holding one slot for ``service_s`` seconds."""
    return Workload(
        "burst",
        np.full(3, arrival_s),
        duration_s,
        service_s=np.full(3, service_s),
    )


def test_burst_waits_for_new_instances() -> None:
    # One instance with one slot takes the first request at 100 s; the other two queue. The
    # engine observes concurrency 3 at 100 s and launches 2 instances, ready 10 s later (provision
    # 10 s, image 0 s because the layer is 0 bytes), so the queued requests wait 10 s.
    profile = small_profile(image__layers=[0])

    result = simulate(burst(), profile, reactive_spec(), CacheMode.COLD, options=NO_WARMUP)

    assert result.ttft_s.tolist() == pytest.approx([0.0, 10.0, 10.0])
    assert result.latency_s.tolist() == pytest.approx([50.0, 60.0, 60.0])
    assert len(result.scale_outs) == 1
    scale_out = result.scale_outs[0]
    assert scale_out.decided_at_s == 100.0
    assert scale_out.added == 2
    assert scale_out.detect_s == 0.0
    assert scale_out.time_to_capacity_s == pytest.approx(10.0)


def test_burst_costs_hand_computed_instance_seconds() -> None:
    # i0 serves 0-150 s and is drained when concurrency falls to 2; one new instance is drained
    # at 160 s when the last requests end; the other runs 100-200 s. 150 + 60 + 100 = 310.
    profile = small_profile(image__layers=[0])

    result = simulate(burst(), profile, reactive_spec(), CacheMode.COLD, options=NO_WARMUP)

    assert result.instance_seconds == pytest.approx(310.0)
    assert [(at, current, desired) for at, current, desired, _ in result.changes] == [
        (100.0, 1, 3),
        (150.0, 3, 2),
        (160.0, 2, 1),
    ]
    assert result.over_objective == 2


@pytest.mark.parametrize(
    ("mode", "expected_s"),
    [
        pytest.param(CacheMode.COLD, 20.0, id="cold-registry"),
        pytest.param(CacheMode.MIRROR, 11.0, id="mirror"),
        pytest.param(CacheMode.NODE, 20.0, id="node-without-warm-node"),
        pytest.param(CacheMode.PREFETCH, 20.0, id="prefetch-before-standby-is-warm"),
    ],
)
def test_cache_mode_sets_time_to_capacity(mode: CacheMode, expected_s: float) -> None:
    # 10 s provision plus 1000 B at 100 B/s from the registry (10 s) or 1000 B/s from the
    # mirror (1 s). The prefetch standby node needs 20 s to warm, so the burst at 5 s misses it.
    profile = small_profile()

    result = simulate(burst(arrival_s=5.0), profile, reactive_spec(), mode, options=NO_WARMUP)

    assert result.scale_outs[0].time_to_capacity_s == pytest.approx(expected_s)


def test_node_mode_reuses_released_node() -> None:
    # Two bursts: the first scale-out is cold (20 s); its instances are released at 160 s, and
    # the second burst at 300 s reuses their warm nodes: no provision, no download, no unpack
    # time in this profile, so capacity is back at once.
    profile = small_profile()
    workload = Workload(
        "two bursts",
        np.array([100.0, 100.0, 100.0, 300.0, 300.0, 300.0]),
        500.0,
        service_s=np.full(6, 50.0),
    )

    result = simulate(workload, profile, reactive_spec(), CacheMode.NODE, options=NO_WARMUP)

    times = [s.time_to_capacity_s for s in result.scale_outs]
    assert times[0] == pytest.approx(20.0)
    assert times[-1] == pytest.approx(0.0)


def test_prefetch_counts_standby_time() -> None:
    profile = small_profile()

    result = simulate(burst(), profile, reactive_spec(), CacheMode.PREFETCH, options=NO_WARMUP)

    assert result.standby_seconds > 0.0
    assert result.timeline.standby.max() >= 1


def test_same_seed_gives_same_run() -> None:
    profile = small_profile(startup__jitter=0.3)
    workload = burst()
    spec = reactive_spec()

    first = simulate(workload, profile, spec, CacheMode.COLD, seed=7, options=NO_WARMUP)
    second = simulate(workload, profile, spec, CacheMode.COLD, seed=7, options=NO_WARMUP)

    assert np.array_equal(first.latency_s, second.latency_s)
    assert first.instance_seconds == second.instance_seconds
    assert first.scale_outs == second.scale_outs


def test_unfinished_requests_count_over_objective() -> None:
    profile = small_profile(image__layers=[0])
    workload = Workload("long", np.array([0.0]), 10.0, service_s=np.array([100.0]))
    options = FleetOptions(warmup_s=0.0, drain_limit_s=20.0)

    result = simulate(workload, profile, reactive_spec(), CacheMode.COLD, options=options)

    assert result.unfinished == 1
    assert np.isinf(result.latency_s[0])


def test_percentiles_with_unfinished_requests() -> None:
    # Three requests on one slot: two finish, the 100 s one is cut off by the drain limit.
    profile = small_profile(image__layers=[0])
    workload = Workload("long", np.zeros(3), 10.0, service_s=np.array([1.0, 2.0, 100.0]))
    options = FleetOptions(warmup_s=0.0, drain_limit_s=20.0)

    result = simulate(workload, profile, reactive_spec(), CacheMode.COLD, options=options)
    summary = summarize(result)

    assert result.unfinished == 1
    # The median is the slower finished request. p95 and p99 lie between it and the
    # unfinished one, so they are infinite, never nan.
    assert summary.latency_p50_s == np.sort(result.latency_s)[1]
    assert np.isfinite(summary.latency_p50_s)
    assert summary.latency_p95_s == np.inf
    assert summary.latency_p99_s == np.inf


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    count = draw(st.integers(0, 60))
    arrivals = sorted(draw(st.lists(st.floats(0, 240), min_size=count, max_size=count)))
    service = draw(st.lists(st.floats(0, 60), min_size=count, max_size=count))
    return Workload("random", np.asarray(arrivals), 240.0, service_s=np.asarray(service))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workload=workloads(),
    policy=st.sampled_from(POLICIES),
    mode=st.sampled_from(list(CacheMode)),
    seed=st.integers(0, 3),
)
def test_run_invariants(workload: Workload, policy: str, mode: CacheMode, seed: int) -> None:
    profile = small_profile(startup__jitter=0.2)
    spec = policy_spec(policy, target=1.0, time_to_ready_s=20.0, initial_capacity=1)
    options = FleetOptions(warmup_s=0.0, drain_limit_s=10_000.0)

    result = simulate(workload, profile, spec, mode, seed=seed, options=options)
    again = simulate(workload, profile, spec, mode, seed=seed, options=options)

    finished = np.isfinite(result.latency_s)
    assert np.all(result.latency_s[finished] >= result.service_s[finished] - 1e-9)
    assert np.all(result.ttft_s >= 0.0)
    assert result.instance_seconds >= 0.0
    assert result.standby_seconds >= 0.0
    assert result.unfinished == 0
    assert np.all(result.timeline.ready + result.timeline.starting <= spec.max_capacity)
    for scale_out in result.scale_outs:
        if scale_out.time_to_capacity_s is not None:
            assert scale_out.time_to_capacity_s >= 0.0
    assert np.array_equal(result.latency_s, again.latency_s)
    assert result.changes == again.changes


def test_coarse_metrics_delay_scale_out() -> None:
    # With 10 s metric periods the burst at 100 s is first reported at 109 s, as the mean of
    # steps 100 to 109, so the new instances are ready at 119 s instead of 110 s.
    profile = small_profile(image__layers=[0])
    options = FleetOptions(warmup_s=0.0, metric_period_s=10.0)

    result = simulate(burst(), profile, reactive_spec(), CacheMode.COLD, options=options)

    assert result.scale_outs[0].decided_at_s == 109.0
    assert result.ttft_s.tolist() == pytest.approx([0.0, 19.0, 19.0])


def test_knative_scales_from_zero_on_queued_request() -> None:
    # Knative's minimum is 0: after the first request the fleet goes to zero, and the request
    # at 300 s waits in the load balancer's queue for a cold start of 20 s (10 s provision,
    # 1000 B at 100 B/s).
    profile = small_profile()
    workload = Workload("gap", np.array([0.0, 300.0]), 400.0, service_s=np.array([5.0, 5.0]))
    spec = policy_spec("knative", target=1.0, time_to_ready_s=20.0, initial_capacity=1)

    result = simulate(workload, profile, spec, CacheMode.COLD, options=NO_WARMUP)

    to_zero = [at for at, _, desired, _ in result.changes if desired == 0]
    assert to_zero
    assert to_zero[0] < 300.0
    assert (300.0, 0, 1) in [(at, current, desired) for at, current, desired, _ in result.changes]
    assert result.ttft_s.tolist() == pytest.approx([0.0, 20.0])

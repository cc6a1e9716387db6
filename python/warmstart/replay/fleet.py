"""The simulated fleet: instances that start through stages and serve a request queue.

One endpoint, scaled by a ``warmstart.engine.Engine`` on a ``FakeClock``. Time advances in
steps of ``step_s`` (1 s). Within a step the simulation is event driven: arrivals,
completions and instances becoming ready are processed in time order.

Serving: requests wait in one FIFO queue at the load balancer. A request starts on the ready
instance with the fewest requests in flight once that instance has a free slot, and keeps the
slot for its service time. Service time does not depend on how busy the instance is. Time
to first token is queueing time plus prefill time; latency is queueing time plus service time.

Metrics: each ready instance reports its requests in flight and the load balancer its queue
length, as series of the summed metric ``concurrency``, so their total is the endpoint's
concurrency. With a metric period above one step, each series reports its mean over the
period once per period, as a coarser metrics pipeline would.

Scaling: a decision above the active (ready plus starting) count launches instances, which
become ready after the stages of ``Profile.stage_times``. A decision below it first cancels
starting instances, newest first, then drains the ready instances with the fewest requests in
flight; a draining instance takes no new requests and is gone when its last request ends.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from warmstart.engine import (
    Aggregation,
    Capacity,
    EndpointSpec,
    Engine,
    FakeClock,
    IngestConfig,
    InstanceEvent,
    Observation,
    PolicyInputs,
    Predictive,
)
from warmstart.engine.decision import Decision
from warmstart.replay.profile import STAGES, CacheMode, Profile
from warmstart.replay.results import RunResult, ScaleOut, Timeline
from warmstart.replay.workload import Workload

__all__ = ["LOAD_BALANCER", "METRIC", "FleetOptions", "service_times", "simulate"]

FloatArray = npt.NDArray[np.float64]

METRIC = "concurrency"
LOAD_BALANCER = "load-balancer"

_STARTING, _READY, _DRAINING, _GONE = range(4)
# Buffered samples are ingested before each evaluation, or after this many steps.
_INGEST_EVERY_STEPS = 8
# Seconds the standby pool keeps its largest recent size in prefetch mode.
_STANDBY_HOLD_S = 300.0


@dataclass(frozen=True, slots=True)
class FleetOptions:
    """Simulation settings; every duration is in seconds.

    ``metric_period_s``: how often each series reports (1, or 10 and 60 to mimic coarser
    pipelines); a multiple of ``step_s``. ``drain_limit_s``: how long the run continues after
    the workload's span while requests are still queued or in flight.
    ``standby_interval_s``: how often the predictive policy resizes the standby pool in
    ``prefetch`` mode. ``warmup_s``: the engine starts this long into the workload, because
    the fleet starts idle and concurrency needs time to build up. Until then capacity stays as
    it started.
    """

    step_s: float = 1.0
    metric_period_s: float = 1.0
    drain_limit_s: float = 1800.0
    standby_interval_s: float = 10.0
    warmup_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.step_s > 0:
            raise ValueError(f"step_s must be positive seconds, got {self.step_s!r}")
        ratio = self.metric_period_s / self.step_s
        if not (ratio >= 1 and abs(ratio - round(ratio)) < 1e-9):
            raise ValueError(
                f"metric_period_s must be a multiple of step_s ({self.step_s} s), "
                f"got {self.metric_period_s!r}"
            )
        for name in ("drain_limit_s", "warmup_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be non-negative seconds, got {value!r}")


def service_times(workload: Workload, profile: Profile) -> tuple[FloatArray, FloatArray]:
    """Return each request's prefill seconds and service seconds under ``profile``.

    Token traces: prefill is overhead plus prompt tokens at the prefill rate, and service adds
    generated tokens at the decode rate. Traces with service times use them as recorded, with
    no prefill, so their time to first token is their queueing time.
    """
    if workload.service_s is not None:
        return np.zeros(workload.requests), workload.service_s.astype(np.float64)
    assert workload.input_tokens is not None
    assert workload.output_tokens is not None
    model = profile.service
    # TODO: decode speed does not fall as an instance's batch grows, so a busy instance is as
    # fast as an idle one.
    prefill = model.overhead_s + workload.input_tokens / model.prefill_tokens_per_s
    return prefill, prefill + workload.output_tokens / model.decode_tokens_per_s


@dataclass(slots=True)
class _Instance:
    index: int
    launched_at: float
    due_at: float
    ready_at: float | None = None
    state: int = _STARTING
    busy: int = 0
    gone_at: float | None = None
    series: int = -1

    @property
    def name(self) -> str:
        return f"i{self.index}"


@dataclass(slots=True)
class _Standby:
    """A standby node in ``prefetch`` mode: provisioned and filling its store until ``warm_at``."""

    created_at: float
    warm_at: float
    removed_at: float | None = None


@dataclass(slots=True)
class _Launches:
    """Start-up stage times of every launch, and the nodes a launch may reuse."""

    profile: Profile
    mode: CacheMode
    rng: np.random.Generator
    warm_nodes: int = 0
    standby: list[_Standby] = field(default_factory=list)
    stage_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    count: int = 0

    def __post_init__(self) -> None:
        self.cold = self.profile.stage_times(mirror=self.mode is CacheMode.MIRROR)
        self.warm = self.profile.stage_times(in_store=True, node_exists=True)

    cold: dict[str, float] = field(init=False)
    warm: dict[str, float] = field(init=False)

    def stages(self, now: float) -> dict[str, float]:
        """Return the jittered stage times of a launch at ``now``, taking a warm node if the
        mode and the pools allow."""
        nominal = self.cold
        if self.mode is CacheMode.NODE and self.warm_nodes > 0:
            self.warm_nodes -= 1
            nominal = self.warm
        elif self.mode is CacheMode.PREFETCH:
            ready = [s for s in self.standby if s.removed_at is None and s.warm_at <= now]
            if ready:
                ready[0].removed_at = now
                nominal = self.warm
        jitter = self.profile.startup.jitter
        spread = 1.0 + jitter * self.rng.uniform(-1.0, 1.0, len(STAGES))
        times = {
            stage: nominal[stage] * float(factor)
            for stage, factor in zip(STAGES, spread, strict=True)
        }
        for stage, seconds in times.items():
            self.stage_sums[stage] += seconds
        self.count += 1
        return times

    def resize_standby(self, wanted: int, now: float) -> None:
        """Create or remove standby nodes (newest first) so ``wanted`` are alive."""
        alive = [s for s in self.standby if s.removed_at is None]
        for node in sorted(alive, key=lambda s: -s.created_at)[: max(0, len(alive) - wanted)]:
            node.removed_at = now
        warming_s = self.profile.startup.provision_s + self.profile.image_times().download_s
        for _ in range(wanted - len(alive)):
            self.standby.append(_Standby(now, now + warming_s))

    def standby_seconds(self, end: float, horizon: float) -> float:
        total = 0.0
        for node in self.standby:
            removed = end if node.removed_at is None else node.removed_at
            total += max(0.0, min(removed, horizon) - node.created_at)
        return total


@dataclass(slots=True)
class _Simulation:
    workload: Workload
    profile: Profile
    spec: EndpointSpec
    mode: CacheMode
    seed: int
    options: FleetOptions
    clock: FakeClock = field(init=False)
    engine: Engine = field(init=False)
    launches: _Launches = field(init=False)
    forecaster: Predictive = field(init=False)
    forecast_state: object = None
    instances: list[_Instance] = field(default_factory=list)
    ready: list[_Instance] = field(default_factory=list)
    starting: int = 0
    queue: deque[int] = field(default_factory=deque)
    completions: list[tuple[float, int, int]] = field(default_factory=list)
    starts: list[tuple[float, int]] = field(default_factory=list)
    scale_outs: list[tuple[float, list[int]]] = field(default_factory=list)
    changes: list[tuple[float, int, int, str]] = field(default_factory=list)
    sums: dict[int, float] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    buffer: tuple[list[int], list[float], list[float]] = field(default_factory=lambda: ([], [], []))
    buffered_steps: int = 0
    standby_wanted: deque[tuple[float, int]] = field(default_factory=deque)
    next_arrival: int = 0
    in_flight: int = 0

    prefill_s: FloatArray = field(init=False)
    service_s: FloatArray = field(init=False)
    start_s: FloatArray = field(init=False)
    finish_s: FloatArray = field(init=False)
    balancer_series: int = field(init=False)

    def __post_init__(self) -> None:
        self.clock = FakeClock(0.0)
        self.engine = Engine(
            [self.spec], clock=self.clock, ingest=IngestConfig(skew_correction=False)
        )
        self.launches = _Launches(self.profile, self.mode, np.random.default_rng(self.seed))
        target = self.profile.service.target_concurrency
        # The same forecast as the warmstart policy's predictive floor.
        self.forecaster = Predictive(
            METRIC, target, window_s=60.0, step_s=60.0, trend_window_s=900.0
        )
        self.prefill_s, self.service_s = service_times(self.workload, self.profile)
        n = self.workload.requests
        self.start_s = np.full(n, np.inf)
        self.finish_s = np.full(n, np.inf)
        self.balancer_series = self.engine.series_id(self.spec.name, METRIC, LOAD_BALANCER)

    # -- instances ---------------------------------------------------------------------------

    def launch(self, now: float) -> int:
        stages = self.launches.stages(now)
        due_at = now + sum(stages.values())
        index = len(self.instances)
        self.instances.append(_Instance(index, now, due_at))
        self.starting += 1
        heapq.heappush(self.starts, (due_at, index))
        self.engine.instance_event(self.spec.name, f"i{index}", InstanceEvent.LAUNCHED, at=now)
        return index

    def make_ready(self, instance: _Instance, now: float) -> None:
        if instance.state == _STARTING:
            self.starting -= 1
        instance.state = _READY
        instance.ready_at = now
        self.ready.append(instance)
        self.engine.instance_event(self.spec.name, instance.name, InstanceEvent.READY, at=now)
        if instance.series < 0:
            instance.series = self.engine.series_id(self.spec.name, METRIC, instance.name)
        while self.queue and instance.busy < self.profile.service.slots:
            self.start(self.queue.popleft(), instance.index, now)

    def remove(self, instance: _Instance, now: float) -> None:
        if instance.state == _STARTING:
            self.starting -= 1
        elif instance.ready_at is not None:
            # The node served, so its store contains the image for the next launch.
            self.launches.warm_nodes += 1
        instance.state = _GONE
        instance.gone_at = now
        self.engine.instance_event(self.spec.name, instance.name, InstanceEvent.GONE, at=now)

    def drain(self, instance: _Instance, now: float) -> None:
        self.ready.remove(instance)
        if instance.busy == 0:
            self.remove(instance, now)
            return
        instance.state = _DRAINING
        self.engine.instance_event(self.spec.name, instance.name, InstanceEvent.DRAINING, at=now)

    def apply(self, decision: Decision, now: float) -> None:
        if decision.changed:
            self.changes.append((now, decision.current, decision.desired, decision.reason))
        active = len(self.ready) + self.starting
        if decision.desired > active:
            launched = [self.launch(now) for _ in range(decision.desired - active)]
            self.scale_outs.append((now, launched))
            return
        surplus = active - decision.desired
        if surplus <= 0:
            return
        starting = [i for i in self.instances if i.state == _STARTING]
        for instance in sorted(starting, key=lambda i: -i.launched_at)[:surplus]:
            self.remove(instance, now)
            surplus -= 1
        for instance in sorted(self.ready, key=lambda i: i.busy)[:surplus]:
            self.drain(instance, now)

    # -- requests ----------------------------------------------------------------------------

    def start(self, request: int, index: int, now: float) -> None:
        self.instances[index].busy += 1
        self.in_flight += 1
        self.start_s[request] = now
        heapq.heappush(self.completions, (now + float(self.service_s[request]), request, index))

    def arrive(self, request: int, now: float) -> None:
        slots = self.profile.service.slots
        best: _Instance | None = None
        for instance in self.ready:
            if instance.busy < slots and (best is None or instance.busy < best.busy):
                best = instance
        if best is None:
            self.queue.append(request)
        else:
            self.start(request, best.index, now)

    def complete(self, request: int, index: int, now: float) -> None:
        instance = self.instances[index]
        instance.busy -= 1
        self.in_flight -= 1
        self.finish_s[request] = now
        if instance.state == _DRAINING:
            if instance.busy == 0:
                self.remove(instance, now)
        elif instance.state == _READY and self.queue:
            self.start(self.queue.popleft(), index, now)

    def advance(self, until: float) -> None:
        """Process every event at or before ``until`` seconds in time order: completions
        first, then instances becoming ready, then arrivals."""
        arrivals = self.workload.arrival_s
        total = arrivals.shape[0]
        while True:
            next_arrival = (
                float(arrivals[self.next_arrival]) if self.next_arrival < total else math.inf
            )
            next_completion = self.completions[0][0] if self.completions else math.inf
            next_start = self.starts[0][0] if self.starts else math.inf
            now = min(next_arrival, next_completion, next_start)
            if now > until:
                return
            if next_completion == now:
                _, request, index = heapq.heappop(self.completions)
                self.complete(request, index, now)
            elif next_start == now:
                _, index = heapq.heappop(self.starts)
                instance = self.instances[index]
                if instance.state == _STARTING:
                    self.make_ready(instance, now)
            else:
                self.arrive(self.next_arrival, now)
                self.next_arrival += 1

    # -- metrics and the engine --------------------------------------------------------------

    def sample(self, now: float, period_end: bool) -> None:
        """Add this step's value of every series; at a period's end, buffer their means."""
        sums, counts = self.sums, self.counts
        for series, value in [(self.balancer_series, len(self.queue))] + [
            (i.series, i.busy) for i in self.ready
        ]:
            sums[series] = sums.get(series, 0.0) + value
            counts[series] = counts.get(series, 0) + 1
        if not period_end:
            return
        ids, stamps, values = self.buffer
        for series, total in sums.items():
            ids.append(series)
            stamps.append(now)
            values.append(total / counts[series])
        sums.clear()
        counts.clear()
        self.buffered_steps += 1

    def flush(self) -> None:
        ids, stamps, values = self.buffer
        if ids:
            self.engine.ingest_batch(ids, stamps, values)
        self.buffer = ([], [], [])
        self.buffered_steps = 0

    def forecast_standby(self, now: float, recent_demand: float) -> None:
        """Size the standby pool from the predictive policy's forecast (``prefetch`` mode)."""
        active = len(self.ready) + self.starting
        capacity = Capacity(active, len(self.ready), self.starting, self.profile.time_to_ready_s())
        observation = Observation(recent_demand, 1, 0, Aggregation.SUM)
        inputs = PolicyInputs(now, capacity, {self.forecaster.query: observation})
        recommendation, self.forecast_state = self.forecaster.recommend(inputs, self.forecast_state)
        # At least one standby node, so a burst that no forecast predicted still finds a warm
        # node. The pool keeps its largest size of the last 300 s, so a forecast dip does not
        # discard nodes that took minutes to warm.
        wanted = max(1, recommendation.desired - active if recommendation.valid else 1)
        history = self.standby_wanted
        history.append((now, wanted))
        while history[0][0] < now - _STANDBY_HOLD_S:
            history.popleft()
        self.launches.resize_standby(max(w for _, w in history), now)

    def evaluate(self, now: float, desired: int) -> int:
        """Ingest buffered samples when due and apply the engine's decisions; return the
        desired capacity."""
        due = self.engine.next_due()
        if due is None or due <= now or self.buffered_steps >= _INGEST_EVERY_STEPS:
            self.flush()
        if due is None or due <= now:
            for decision in self.engine.tick(now):
                desired = decision.desired
                self.apply(decision, now)
        return desired

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> tuple[Timeline, FloatArray, float]:
        options = self.options
        for _ in range(self.spec.start_capacity):
            instance = _Instance(len(self.instances), 0.0, 0.0, state=_READY)
            self.instances.append(instance)
            self.make_ready(instance, 0.0)
        workload_end = self.workload.duration_s
        end_limit = workload_end + options.drain_limit_s
        period_steps = round(options.metric_period_s / options.step_s)
        standby_steps = max(1, round(options.standby_interval_s / options.step_s))
        rows: list[tuple[float, int, int, int, int, int, int]] = []
        capacity_before: list[int] = []
        desired = self.spec.start_capacity
        step = 0
        now = 0.0
        while True:
            now = step * options.step_s
            self.advance(now)
            idle = self.next_arrival >= self.workload.requests and not self.queue
            if (now >= workload_end and idle and self.in_flight == 0) or now > end_limit:
                break
            demand = self.in_flight + len(self.queue)
            capacity_before.append(len(self.ready) + self.starting)
            if now >= options.warmup_s:
                self.clock.set(now)
                self.sample(now, period_end=(step + 1) % period_steps == 0)
                desired = self.evaluate(now, desired)
            if self.mode is CacheMode.PREFETCH and step % standby_steps == 0:
                recent = [row[1] for row in rows[-standby_steps:]] or [demand]
                self.forecast_standby(now, float(np.mean(recent)))
            standby = sum(1 for s in self.launches.standby if s.removed_at is None)
            rows.append(
                (now, demand, desired, len(self.ready), self.starting, len(self.queue), standby)
            )
            step += 1
        columns = list(zip(*rows, strict=True)) if rows else [()] * 7
        timeline = Timeline(
            time_s=np.asarray(columns[0], dtype=np.float64),
            demand=np.asarray(columns[1], dtype=np.int64),
            desired=np.asarray(columns[2], dtype=np.int64),
            ready=np.asarray(columns[3], dtype=np.int64),
            starting=np.asarray(columns[4], dtype=np.int64),
            queued=np.asarray(columns[5], dtype=np.int64),
            standby=np.asarray(columns[6], dtype=np.int64),
        )
        return timeline, np.asarray(capacity_before, dtype=np.float64), now

    def instance_seconds(self, end: float) -> float:
        horizon = self.workload.duration_s
        total = 0.0
        for instance in self.instances:
            gone = end if instance.gone_at is None else instance.gone_at
            total += max(0.0, min(gone, horizon) - max(instance.launched_at, 0.0))
        return total

    def scale_out_records(self, timeline: Timeline, capacity: FloatArray) -> tuple[ScaleOut, ...]:
        """Pair each scale-out with the start of the overload before it and its ready time."""
        target = self.profile.service.target_concurrency
        over = timeline.demand > target * capacity
        # run_start[k]: the first step of the overload run that contains step k.
        run_start = np.arange(over.shape[0])
        for k in range(1, over.shape[0]):
            if over[k] and over[k - 1]:
                run_start[k] = run_start[k - 1]
        records = []
        for decided_at, launched in self.scale_outs:
            k = int(np.searchsorted(timeline.time_s, decided_at))
            need = float(timeline.time_s[run_start[k]]) if k < over.shape[0] and over[k] else None
            ready_times = [self.instances[i].ready_at for i in launched]
            last_ready = (
                None if None in ready_times else max(t for t in ready_times if t is not None)
            )
            records.append(ScaleOut(decided_at, len(launched), need, last_ready))
        return tuple(records)


def simulate(
    workload: Workload,
    profile: Profile,
    spec: EndpointSpec,
    mode: CacheMode,
    *,
    policy: str | None = None,
    seed: int = 0,
    options: FleetOptions | None = None,
) -> RunResult:
    """Replay ``workload`` against a fleet scaled by ``spec`` with instances started in ``mode``.

    ``spec`` must read the metric ``concurrency``. The fleet starts with ``spec.start_capacity``
    ready instances. After the workload's span the run continues until every request has ended,
    for at most ``options.drain_limit_s`` seconds. The same arguments give the same result.
    """
    started = time.perf_counter()
    simulation = _Simulation(workload, profile, spec, mode, seed, options or FleetOptions())
    timeline, capacity, end = simulation.run()
    wait = simulation.start_s - workload.arrival_s
    launches = simulation.launches
    return RunResult(
        policy=policy or spec.name,
        mode=mode.value,
        workload=workload.name,
        objective_ttft_s=profile.service.objective_ttft_s,
        ttft_s=wait + simulation.prefill_s,
        latency_s=simulation.finish_s - workload.arrival_s,
        service_s=simulation.service_s,
        instance_seconds=simulation.instance_seconds(end),
        standby_seconds=launches.standby_seconds(end, workload.duration_s),
        scale_outs=simulation.scale_out_records(timeline, capacity),
        changes=tuple(simulation.changes),
        stages_s={
            stage: total / launches.count if launches.count else 0.0
            for stage, total in launches.stage_sums.items()
        },
        launches=launches.count,
        timeline=timeline,
        wall_s=time.perf_counter() - started,
    )

"""The scaling engine: ingest samples, evaluate endpoints, deliver decisions.

``Engine`` owns the series store, one runtime record per endpoint and, once started, one
background task that evaluates endpoints when they are due. The same evaluation is available
synchronously as ``tick(now)`` (due endpoints) and ``evaluate(now)`` (all endpoints), which is
how a replay drives the engine on a simulated clock.

Capacity per endpoint: until the engine receives an instance event for an endpoint, its current
capacity is the last decided capacity. After that, it is ``ready + pending``, where pending
counts launched instances that are not ready yet plus any capacity decided but not launched yet,
so a burst that already caused a scale-out does not cause a second one. An instance that times
out (``EndpointSpec.instance_timeout_s``) keeps counting until its ``gone`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from warmstart.engine.aggregate import Aggregation, Observation
from warmstart.engine.batch import QueryKey, WindowResults, observe
from warmstart.engine.behavior import longest_rate_period_s, run_stages
from warmstart.engine.clock import Clock, WallClock
from warmstart.engine.decision import Decision
from warmstart.engine.errors import (
    EngineClosedError,
    EngineConfigError,
    TooManySeriesError,
    UnknownEndpointError,
)
from warmstart.engine.instances import InstanceEvent, InstanceTracker
from warmstart.engine.liveness import describe_timeouts
from warmstart.engine.policy._util import ceil_count
from warmstart.engine.policy.base import Capacity, PolicyInputs
from warmstart.engine.policy.predictive import LoadHistory, Predictive
from warmstart.engine.policy.target_tracking import TargetTracking
from warmstart.engine.runtime import EndpointRuntime
from warmstart.engine.samples import RejectCounter, RejectReason, Sample
from warmstart.engine.series import IngestConfig, SeriesStore
from warmstart.engine.spec import EndpointSpec, MetricKind
from warmstart.engine.tracking_groups import TrackingGroups

logger = logging.getLogger("warmstart.engine")

DecisionCallback = Callable[[Decision], None]
PrefetchHook = Callable[[Decision], object]

# Buckets per table are rounded up to a multiple of this, so endpoints with similar windows
# share one table (a 60 s window of 1 s buckets gets 64).
_BUCKET_ROUNDING = 16
# Scalar samples are buffered and ingested as one batch at this size or before an evaluation.
_BUFFER_SIZE = 8192


@dataclass(frozen=True, slots=True)
class EndpointState:
    """A snapshot of one endpoint.

    ``desired`` is the last decided capacity; ``current``, ``ready`` and ``pending`` are the
    capacity the next evaluation starts from (see the module docstring). ``timed_out`` counts
    the instances that timed out (``EndpointSpec.instance_timeout_s``) and still have a phase,
    so they still count toward capacity until their ``gone`` event. ``policy_states`` maps
    each policy name to the state it returned last; treat it as read-only.
    """

    name: str
    desired: int
    current: int
    ready: int
    pending: int
    draining: int
    timed_out: int
    time_to_ready_s: float | None
    last_decision: Decision | None
    policy_states: dict[str, Any]


class Engine:
    """Turn metric samples into scale decisions for a fixed set of endpoints.

    ``clock`` is the only source of time (``WallClock``, Unix time, when None, because sample
    timestamps are compared with it). ``on_decision`` is
    called synchronously with each emitted decision; ``emit`` selects whether only decisions that
    change capacity (``"changes"``) or every evaluation (``"all"``) are emitted to callbacks and
    to ``decisions()`` iterators. ``tick`` and ``evaluate`` return every decision either way.
    ``queue_size`` bounds each ``decisions()`` iterator; when a consumer falls behind, the
    oldest queued decision is dropped and counted in ``dropped_decisions``.

    ``prefetch`` is called with the decision when a valid ``Predictive`` recommendation, which
    sizes for the load expected when a new instance would be ready, exceeds the endpoint's
    current capacity (``Capacity.current``), at most once per ``prefetch_interval_s`` seconds per
    endpoint, because the images a prefetch warms stay warm. That decision has ``prefetch`` set
    and is emitted even without a change. Exceptions from the hook are logged.
    ``prefetch_lead_s`` (seconds, typically the image pull time) makes the hook look further
    ahead than the scale-out: it fires when the forecast at ``time to ready + prefetch_lead_s``
    exceeds the current capacity, so images are warm before the scale-out that needs them.
    """

    def __init__(
        self,
        endpoints: Iterable[EndpointSpec],
        *,
        clock: Clock | None = None,
        ingest: IngestConfig | None = None,
        on_decision: DecisionCallback | None = None,
        emit: Literal["changes", "all"] = "changes",
        queue_size: int = 1024,
        prefetch: PrefetchHook | None = None,
        prefetch_interval_s: float = 300.0,
        prefetch_lead_s: float = 0.0,
    ) -> None:
        specs = list(endpoints)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise EngineConfigError(f"duplicate endpoint names in {names}")
        if emit not in ("changes", "all"):
            raise EngineConfigError(f"emit must be 'changes' or 'all', got {emit!r}")
        if not prefetch_interval_s >= 0:
            raise EngineConfigError(
                f"prefetch_interval_s must be at least 0 seconds, got {prefetch_interval_s!r}"
            )
        if not (math.isfinite(prefetch_lead_s) and prefetch_lead_s >= 0):
            raise EngineConfigError(
                f"prefetch_lead_s must be a finite number of seconds >= 0, got {prefetch_lead_s!r}"
            )
        if queue_size < 1:
            raise EngineConfigError(f"queue_size must be at least 1, got {queue_size!r}")
        self.clock: Clock = clock if clock is not None else WallClock()
        # The clock reading of the last ``tick()`` without an explicit time, to detect a clock
        # that steps back.
        self._last_reading: float | None = None
        self.ingest_config = ingest if ingest is not None else IngestConfig()
        self.rejects = RejectCounter()
        self._store = SeriesStore(self.ingest_config, len(specs))
        # Per endpoint index: when its live series were last counted, and the count since.
        self._live_series: dict[int, tuple[float, int]] = {}
        self._callbacks: list[DecisionCallback] = [on_decision] if on_decision else []
        self._prefetch = prefetch
        self._prefetch_interval_s = prefetch_interval_s
        self._prefetch_lead_s = prefetch_lead_s
        self._emit_all = emit == "all"
        self._queue_size = queue_size
        self._subscribers: list[asyncio.Queue[Decision | None]] = []
        self.dropped_decisions = 0
        self._endpoints: dict[str, EndpointRuntime] = {}
        self._ordered: list[EndpointRuntime] = []
        self._groups = 0
        self._query_keys: list[QueryKey] = []
        self._query_ids: dict[QueryKey, int] = {}
        self._tracking_groups = TrackingGroups()
        self._created = len(specs)
        for index, spec in enumerate(specs):
            self._add_endpoint(index, spec)
        self._buffer: tuple[list[int], list[float], list[float], list[float]] = ([], [], [], [])
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._closed = False

    # -- setup -------------------------------------------------------------------------------

    def _add_endpoint(self, index: int, spec: EndpointSpec) -> None:
        future_buckets = math.ceil(self.ingest_config.future_margin_s / spec.bucket_s)
        needed = math.ceil(spec.longest_window_s / spec.bucket_s) + future_buckets + 2
        n_buckets = -(-needed // _BUCKET_ROUNDING) * _BUCKET_ROUNDING
        table_id = self._store.table_for(spec.bucket_s, n_buckets)
        queries = tuple(dict.fromkeys(q for p in spec.policies for q in p.queries()))
        metric_index = {m.name: i for i, m in enumerate(spec.metrics)}
        hold = spec.behavior.restart_hold_s
        query_ids = [
            self._query_id((table_id, q.statistic, q.window_s, q.half_life_s)) for q in queries
        ]
        plan = [
            (
                q,
                query_id,
                self._groups + metric_index[q.metric],
                spec.metrics[metric_index[q.metric]],
            )
            for q, query_id in zip(queries, query_ids, strict=True)
        ]
        tracking = None
        tracking_rows = None
        # An exact type check, because a subclass may override recommend.
        if all(type(p) is TargetTracking for p in spec.policies):
            tracking = tuple(
                (p, queries.index(p.query)) for p in spec.policies if isinstance(p, TargetTracking)
            )
            tracking_rows = tuple(
                self._tracking_groups.tracking_rows.add(
                    plan[position][1],
                    plan[position][2],
                    policy.target,
                    plan[position][3].aggregation,
                    plan[position][3].per_instance,
                )
                for policy, position in tracking
            )
        endpoint = EndpointRuntime(
            spec=spec,
            index=index,
            table_id=table_id,
            group_base=self._groups,
            restart_hold_s=spec.longest_window_s if hold is None else hold,
            longest_rate_period_s=longest_rate_period_s(spec.behavior),
            queries=queries,
            query_ids=frozenset(query_ids),
            metric_index=metric_index,
            plan=plan,
            tracking=tracking,
            tracking_rows=tracking_rows,
            forecasts=any(isinstance(p, Predictive) for p in spec.policies),
            instances=InstanceTracker(configured_s=spec.time_to_ready_s),
            policy_states=[p.initial_state() for p in spec.policies],
            requested=spec.start_capacity,
            zero_since=-math.inf if spec.start_capacity == 0 else None,
        )
        self._groups += len(spec.metrics)
        self._endpoints[spec.name] = endpoint
        self._ordered.append(endpoint)
        self._store.watch[index] = endpoint.requested == 0
        self._store.instances.timeout_s[index] = spec.effective_instance_timeout_s

    def _query_id(self, key: QueryKey) -> int:
        query_id = self._query_ids.get(key)
        if query_id is None:
            query_id = self._query_ids[key] = len(self._query_keys)
            self._query_keys.append(key)
        return query_id

    def add_endpoint(self, spec: EndpointSpec) -> None:
        """Start scaling a new endpoint; raise ``EngineConfigError`` if the name is taken.

        The endpoint starts like one given to the constructor: no data, the restart hold, and
        ``spec.start_capacity``.
        """
        self._check_open()
        if spec.name in self._endpoints:
            raise EngineConfigError(f"endpoint {spec.name!r} already exists")
        self.flush()
        index = self._created
        self._created += 1
        self._store.add_endpoint_slot()
        self._add_endpoint(index, spec)
        if self._wake is not None:
            self._wake.set()
        logger.info("endpoint %s added", spec.name)

    def remove_endpoint(self, name: str) -> None:
        """Stop scaling ``name`` and forget its series and state.

        Later samples for ``name`` are rejected as unknown until it is added again. Raise
        ``UnknownEndpointError`` if there is no such endpoint.
        """
        self._check_open()
        runtime = self._endpoint(name)
        self.flush()
        del self._endpoints[name]
        self._ordered.remove(runtime)
        self._store.forget_endpoint(runtime.index)
        self._live_series.pop(runtime.index, None)
        self._tracking_groups.release(runtime)
        logger.info("endpoint %s removed", name)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Names of the endpoints, in the order given."""
        return tuple(self._endpoints)

    def _endpoint(self, name: str) -> EndpointRuntime:
        try:
            return self._endpoints[name]
        except KeyError:
            raise UnknownEndpointError(
                f"unknown endpoint {name!r}; known endpoints: {sorted(self._endpoints)}"
            ) from None

    # -- ingestion ---------------------------------------------------------------------------

    def series_id(self, endpoint: str, metric: str, instance: str) -> int:
        """Return the integer id of a series for ``ingest_batch``, creating it if needed.

        Raise ``UnknownEndpointError`` if the endpoint or metric is not declared, and
        ``TooManySeriesError`` if the endpoint already has
        ``IngestConfig.max_series_per_endpoint`` series. The id stays valid until the series
        is dropped (see ``SeriesStore.collect``): after its instance is gone and its samples
        have left every window, samples under the id are rejected as ``unknown_series``.
        """
        found = self._lookup_series(endpoint, metric, instance)
        if found is RejectReason.TOO_MANY_SERIES:
            limit = self.ingest_config.max_series_per_endpoint
            raise TooManySeriesError(
                f"endpoint {endpoint!r} has reached its limit of {limit} live series, so series "
                f"({metric!r}, {instance!r}) was not created. Raise "
                "IngestConfig.max_series_per_endpoint if the instances are real"
            )
        if isinstance(found, RejectReason):
            raise UnknownEndpointError(
                f"{found.value.replace('_', ' ')}: endpoint {endpoint!r}, metric {metric!r}"
            )
        return found

    def _lookup_series(self, endpoint: str, metric: str, instance: str) -> int | RejectReason:
        key = (endpoint, metric, instance)
        sid = self._store.keys.get(key)
        if sid is not None:
            return sid
        runtime = self._endpoints.get(endpoint)
        if runtime is None:
            return RejectReason.UNKNOWN_ENDPOINT
        metric_index = runtime.metric_index.get(metric)
        if metric_index is None:
            return RejectReason.UNKNOWN_METRIC
        now = self.clock.now()
        if self._series_limit_reached(runtime.index, now):
            return RejectReason.TOO_MANY_SERIES
        metric_spec = runtime.spec.metrics[metric_index]
        phase = runtime.instances.phase.get(instance)
        sid = self._store.add_series(
            key,
            table_id=runtime.table_id,
            group=runtime.group_base + metric_index,
            endpoint=runtime.index,
            nonnegative=metric_spec.kind is MetricKind.COUNT,
            stale_after_s=metric_spec.stale_after_s,
            ready=phase is InstanceEvent.READY,
            created_s=now,
            watched=phase is not InstanceEvent.LAUNCHED,
        )
        # A timed-out instance that reports again is expected to report from now on.
        runtime.instances.silent.discard(instance)
        counted = self._live_series.get(runtime.index)
        if counted is not None:
            self._live_series[runtime.index] = (counted[0], counted[1] + 1)
        return sid

    def _series_limit_reached(self, endpoint: int, now: float) -> bool:
        """Return whether ``endpoint`` has ``max_series_per_endpoint`` live series.

        Counting live series scans every series. So once the endpoint stores as many series as
        the limit, the count is reused for a second, or until one of its instances
        goes.
        """
        limit = self.ingest_config.max_series_per_endpoint
        if self._store.endpoint_series[endpoint] < limit:
            return False
        counted = self._live_series.get(endpoint)
        if counted is None or not 0 <= now - counted[0] < 1.0:
            counted = (now, self._store.live_series(endpoint, now))
            self._live_series[endpoint] = counted
        return counted[1] >= limit

    def ingest(
        self, endpoint: str, metric: str, instance: str, timestamp_s: float, value: float
    ) -> None:
        """Queue one sample (event time ``timestamp_s`` in seconds).

        Unknown endpoints and metrics are rejected at once; the other checks run when the
        queue is flushed, at the latest before the next evaluation. Rejections are counted in
        ``rejects`` and logged, never raised. A value or timestamp that is not a number raises
        ``TypeError`` or ``ValueError`` from ``float()``.
        """
        self._check_open()
        found = self._lookup_series(endpoint, metric, instance)
        now = self.clock.now()
        if isinstance(found, RejectReason):
            self.rejects.add(found, 1, now, f"endpoint {endpoint!r}, metric {metric!r}")
            return
        sids, timestamps, values, received = self._buffer
        # Convert before appending, so a value of the wrong type raises here and leaves the
        # queue's columns of equal length.
        timestamp = float(timestamp_s)
        number = float(value)
        sids.append(found)
        timestamps.append(timestamp)
        values.append(number)
        received.append(now)
        store = self._store
        if len(sids) >= _BUFFER_SIZE or store.watch[store.endpoint[store.slot_of(found)]]:
            self.flush()

    def ingest_sample(self, sample: Sample) -> None:
        """Queue one ``Sample``; see ``ingest``."""
        self.ingest(
            sample.endpoint, sample.metric, sample.instance, sample.timestamp_s, sample.value
        )

    def flush(self) -> int:
        """Ingest queued single samples now; return how many were accepted."""
        sids, timestamps, values, received = self._buffer
        if not sids:
            return 0
        self._buffer = ([], [], [], [])
        codes = self._ingest_codes(
            np.asarray(sids, dtype=np.int64),
            np.asarray(timestamps, dtype=np.float64),
            np.asarray(values, dtype=np.float64),
            np.asarray(received, dtype=np.float64),
        )
        return int(np.count_nonzero(codes < 0))

    def ingest_batch(
        self,
        series_ids: npt.ArrayLike,
        timestamps_s: npt.ArrayLike,
        values: npt.ArrayLike,
    ) -> int:
        """Ingest numpy columns of series ids (from ``series_id``), event times and values.

        Return how many samples were accepted; each rejected sample is counted by reason, and
        never stops the good samples of the batch.
        """
        codes = self.ingest_batch_reasons(series_ids, timestamps_s, values)
        return int(np.count_nonzero(codes < 0))

    def ingest_batch_reasons(
        self,
        series_ids: npt.ArrayLike,
        timestamps_s: npt.ArrayLike,
        values: npt.ArrayLike,
    ) -> npt.NDArray[np.int8]:
        """Ingest like ``ingest_batch``; return each sample's reject reason code.

        A code is -1 for an accepted sample, else the index of its reason in
        ``warmstart.engine.samples.REASON_CODES``, so a caller can name the rejected rows.
        """
        self._check_open()
        sids = np.asarray(series_ids, dtype=np.int64)
        timestamps = np.asarray(timestamps_s, dtype=np.float64)
        data = np.asarray(values, dtype=np.float64)
        if not sids.shape == timestamps.shape == data.shape or sids.ndim != 1:
            raise ValueError(
                f"series_ids, timestamps_s and values must be 1-D and of equal length, "
                f"got shapes {sids.shape}, {timestamps.shape} and {data.shape}"
            )
        self.flush()
        return self._ingest_codes(sids, timestamps, data, self.clock.now())

    def ingest_columns(
        self,
        endpoints: npt.ArrayLike,
        metrics: npt.ArrayLike,
        instances: npt.ArrayLike,
        timestamps_s: npt.ArrayLike,
        values: npt.ArrayLike,
    ) -> int:
        """Ingest columns of names (arrays, or one string for the whole batch) and values.

        Names are interned with one dictionary lookup per distinct series in the batch, so this
        is slower than ``ingest_batch`` with ids but needs no setup. Return the accepted count.
        """
        self._check_open()
        timestamps = np.asarray(timestamps_s, dtype=np.float64)
        n = timestamps.size
        columns = [
            np.broadcast_to(np.asarray(c, dtype=object), (n,))
            for c in (endpoints, metrics, instances)
        ]
        codes = []
        uniques = []
        for column in columns:
            unique, inverse = np.unique(column.astype(str), return_inverse=True)
            uniques.append(unique)
            codes.append(inverse.astype(np.int64))
        combined = (codes[0] * uniques[1].size + codes[1]) * uniques[2].size + codes[2]
        keys, inverse = np.unique(combined, return_inverse=True)
        lookup = np.empty(keys.size, dtype=np.int64)
        now = self.clock.now()
        for position, key in enumerate(keys.tolist()):
            rest, instance_code = divmod(key, uniques[2].size)
            endpoint_code, metric_code = divmod(rest, uniques[1].size)
            endpoint = str(uniques[0][endpoint_code])
            metric = str(uniques[1][metric_code])
            found = self._lookup_series(endpoint, metric, str(uniques[2][instance_code]))
            if isinstance(found, RejectReason):
                count = int(np.count_nonzero(inverse == position))
                self.rejects.add(found, count, now, f"endpoint {endpoint!r}, metric {metric!r}")
                lookup[position] = -1
            else:
                lookup[position] = found
        sids = lookup[inverse]
        known = sids >= 0
        self.flush()
        reasons = self._ingest_codes(
            sids[known], timestamps[known], np.asarray(values, dtype=np.float64)[known], now
        )
        return int(np.count_nonzero(reasons < 0))

    def _ingest_codes(
        self,
        sids: npt.NDArray[np.int64],
        timestamps: npt.NDArray[np.float64],
        values: npt.NDArray[np.float64],
        received: float | npt.NDArray[np.float64],
    ) -> npt.NDArray[np.int8]:
        now = self.clock.now()
        codes = self._store.ingest(sids, timestamps, values, received, now)
        self.rejects.add_codes(codes, now)
        if self._store.woken:
            self._store.woken = False
            if self._wake is not None:
                self._wake.set()
        return codes

    # -- instances ---------------------------------------------------------------------------

    def instance_event(
        self, endpoint: str, instance: str, event: InstanceEvent, at: float | None = None
    ) -> None:
        """Record an instance lifecycle event at clock time ``at`` (seconds; now if None).

        Raise ``UnknownEndpointError`` for an undeclared endpoint.
        """
        self._check_open()
        runtime = self._endpoint(endpoint)
        when = self.clock.now() if at is None else at
        runtime.instances.apply(instance, event, when)
        runtime.cached_capacity = None
        store = self._store
        for sid in store.instance_series.get((runtime.index, instance), ()):
            store.ready[sid] = event is InstanceEvent.READY
            store.active[sid] = event is not InstanceEvent.GONE
        has_series = (runtime.index, instance) in store.instance_series
        store.instances.record_event(runtime.index, instance, event, when, has_series)
        if event is InstanceEvent.GONE:
            self._live_series.pop(runtime.index, None)
        logger.debug("endpoint %s instance %s %s at %.3f", endpoint, instance, event.value, when)

    # -- evaluation --------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[Decision]:
        """Evaluate every endpoint whose interval has elapsed at ``now`` (clock time if None).

        When ``now`` is None and the clock reads earlier than at the previous such call, every
        schedule moves back by the difference, so a wall clock set back by an hour does not
        pause evaluations for an hour.
        """
        self._check_open()
        if now is None:
            when = self.clock.now()
            self._follow_step_back(when)
        else:
            when = now
        due = [e for e in self._ordered if e.next_due is None or e.next_due <= when]
        return self._evaluate(due, when)

    def _follow_step_back(self, reading: float) -> None:
        last = self._last_reading
        self._last_reading = reading
        if last is None or reading >= last:
            return
        step_s = last - reading
        for runtime in self._ordered:
            if runtime.next_due is not None:
                runtime.next_due -= step_s
        logger.warning(
            "engine clock went back %.3f s; moved every evaluation schedule back by as much",
            step_s,
        )

    def evaluate(
        self, now: float | None = None, endpoints: Sequence[str] | None = None
    ) -> list[Decision]:
        """Evaluate the named endpoints (all if None) at ``now``, ignoring their schedule."""
        self._check_open()
        when = self.clock.now() if now is None else now
        chosen = self._ordered if endpoints is None else [self._endpoint(n) for n in endpoints]
        return self._evaluate(chosen, when)

    def next_due(self) -> float | None:
        """Return the earliest clock time (seconds) at which an endpoint is due, or None."""
        dues = [e.next_due for e in self._ordered]
        if any(d is None for d in dues):
            return None
        return min((d for d in dues if d is not None), default=None)

    def _evaluate(self, due: Sequence[EndpointRuntime], now: float) -> list[Decision]:
        self.flush()
        if not due:
            return []
        self._time_out_silent(now)
        self._store.collect(now)
        wanted: set[int] = set()
        for runtime in due:
            wanted.update(runtime.query_ids)
        results = observe(self._store, self._query_keys, wanted, self._groups, now)
        # The log level is read once per pass instead of once per changed endpoint.
        log_changes = logger.isEnabledFor(logging.INFO)
        decisions = self._decide_all(due, now, results, log_changes)
        if self._callbacks or self._subscribers:
            for decision in decisions:
                if self._emit_all or decision.changed or decision.prefetch:
                    self._deliver(decision)
        return decisions

    def _time_out_silent(self, now: float) -> None:
        """Time out the instances silent for longer than their endpoint's instance timeout.

        The series of each are dropped at once, so they no longer count as stale. They are
        dropped rather than marked inactive until ``collect`` can drop them, so that a sample
        arriving later under the same names starts a new, active series. An instance that was
        only cut off then comes back with its next sample. A timed-out instance keeps its
        phase and so its place in the capacity, which only instance events change. While it
        is ready it is not counted as a ready instance without data (``silent_ready``).
        """
        store = self._store
        clocks = store.instances
        numbers = clocks.silent(store, now)
        if numbers.size == 0:
            return
        by_index = {runtime.index: runtime for runtime in self._ordered}
        slots: list[int] = []
        timed_out: dict[int, list[tuple[str, float]]] = {}
        for number in numbers.tolist():
            endpoint, name = clocks.names[number]
            since = float(clocks.heard_s[number])
            instance_slots = store.instance_series.get((endpoint, name), [])
            slots.extend(instance_slots)
            clocks.time_out(number, bool(instance_slots))
            runtime = by_index[endpoint]
            runtime.instances.time_out(name)
            runtime.timed_out.append((name, since))
            self._live_series.pop(endpoint, None)
            timed_out.setdefault(endpoint, []).append((name, since))
        store.drop(np.array(slots, dtype=np.int64))
        for endpoint, found in timed_out.items():
            runtime = by_index[endpoint]
            logger.warning(
                "endpoint %s: %d instance(s) %s",
                runtime.spec.name,
                len(found),
                describe_timeouts(found, runtime.spec.effective_instance_timeout_s),
            )

    def _decide_all(
        self, due: Sequence[EndpointRuntime], now: float, results: WindowResults, log_changes: bool
    ) -> list[Decision]:
        """Decide for each of ``due`` and set when it is due next; return the decisions in order.

        Endpoints whose policies are all target tracking are collected into groups and decided
        together in numpy (``TrackingGroups.decide``). The decisions are those of deciding one
        endpoint after the other, and only the order of the log lines can differ. The prefetch
        hook is the only code that may change the engine during a pass, so a group ends before
        an endpoint that may call it. A group also ends before an endpoint that is already in
        it, which is decided again from its first decision.
        """
        decisions: list[Decision | None] = [None] * len(due)
        group: list[int] = []
        members: set[int] = set()

        def decide_one(runtime: EndpointRuntime) -> Decision:
            return self._decide(runtime, now, results, log_changes)

        def apply(runtime: EndpointRuntime, decision: Decision) -> None:
            self._apply(runtime, decision, log_changes)

        def decide_group() -> None:
            if not group:
                return
            endpoints = [due[position] for position in group]
            last_active = self._store.last_active
            decided = self._tracking_groups.decide(
                endpoints, now, results, last_active, decide_one, apply
            )
            for position, decision in zip(group, decided, strict=True):
                decisions[position] = decision
                self._schedule(due[position], now)
            group.clear()
            members.clear()

        # ``run_rows`` stores times as floats with NaN for None, so it needs a finite time.
        groups_allowed = math.isfinite(now)
        for position, runtime in enumerate(due):
            if groups_allowed and runtime.tracking is not None:
                if runtime.index in members:
                    decide_group()
                group.append(position)
                members.add(runtime.index)
                continue
            if self._prefetch is not None and runtime.forecasts:
                decide_group()
            decisions[position] = self._decide(runtime, now, results, log_changes)
            self._schedule(runtime, now)
        decide_group()
        return [decision for decision in decisions if decision is not None]

    @staticmethod
    def _schedule(runtime: EndpointRuntime, now: float) -> None:
        """Set when the endpoint is due next, after a decision at ``now``."""
        interval = runtime.spec.interval_s
        next_due = runtime.next_due
        if next_due is None:
            runtime.next_due = now + interval
        elif now - next_due < interval:
            # On schedule, the formula below adds exactly one interval.
            runtime.next_due = next_due + interval
        else:
            runtime.next_due = next_due + interval * max(
                1, math.floor((now - next_due) / interval) + 1
            )

    def _decide(
        self, runtime: EndpointRuntime, now: float, results: WindowResults, log_changes: bool
    ) -> Decision:
        """Decide for one endpoint with ``run_stages``."""
        spec = runtime.spec
        capacity = runtime.capacity()
        current = capacity.current
        if runtime.tracking is not None:
            observed = self._observations(runtime, capacity, results)
            recommendations = [
                tracking.recommend_observed(observed[plan_position], current)
                for tracking, plan_position in runtime.tracking
            ]
        else:
            observed = self._observations(runtime, capacity, results)
            inputs = PolicyInputs(now, capacity, dict(zip(runtime.queries, observed, strict=True)))
            states = runtime.policy_states
            recommendations = []
            for position, policy in enumerate(spec.policies):
                recommendation, states[position] = policy.recommend(inputs, states[position])
                recommendations.append(recommendation)

        state = self._tracking_groups.take_state(runtime)
        started = state.started_at
        # Read per endpoint, not once per pass: a prefetch hook may ingest samples mid-pass.
        active_at = float(self._store.last_active[runtime.index])
        idle_since = max(active_at, started if started is not None else now)
        zero_since = runtime.zero_since
        woken = current == 0 and zero_since is not None and active_at > zero_since
        decision = run_stages(
            spec.behavior,
            runtime.longest_rate_period_s,
            state,
            spec.name,
            now,
            current,
            spec.min_capacity,
            spec.max_capacity,
            runtime.restart_hold_s,
            now - idle_since,
            woken,
            recommendations,
        )
        if runtime.timed_out:
            decision = runtime.note_timeouts(decision)
        if self._prefetch is not None:
            decision = self._maybe_prefetch(runtime, decision, capacity, self._prefetch)
        self._apply(runtime, decision, log_changes)
        return decision

    def _observations(
        self, runtime: EndpointRuntime, capacity: Capacity, results: WindowResults
    ) -> list[Observation]:
        """Return the observation of each of the endpoint's queries, in plan order."""
        stale, fresh_ready = results.freshness_lists()
        tracked = runtime.instances.seen_event
        silent_ready = runtime.instances.silent_ready
        observed = []
        for _, query_id, group, metric in runtime.plan:
            sums, counts = results.query_lists(query_id)
            reporting = counts[group]
            missing = stale[group]
            if metric.per_instance and tracked:
                missing += max(0, capacity.ready - silent_ready - fresh_ready[group])
            value: float | None = None
            if reporting:
                value = sums[group]
                if metric.aggregation is Aggregation.MEAN:
                    value /= reporting
            observed.append(Observation(value, reporting, missing, metric.aggregation))
        return observed

    def _maybe_prefetch(
        self, runtime: EndpointRuntime, decision: Decision, capacity: Capacity, hook: PrefetchHook
    ) -> Decision:
        current = capacity.current
        expects_more = self._forecast_exceeds(runtime, decision, capacity)
        last = runtime.last_prefetch
        if not expects_more or (
            last is not None and decision.at - last < self._prefetch_interval_s
        ):
            return decision
        runtime.last_prefetch = decision.at
        decision = dataclasses.replace(decision, prefetch=True)
        logger.info(
            "endpoint %s: forecast exceeds capacity %d, prefetching", decision.endpoint, current
        )
        try:
            hook(decision)
        except Exception:
            logger.exception("prefetch hook %r failed for %s", hook, decision.endpoint)
        return decision

    def _forecast_exceeds(
        self, runtime: EndpointRuntime, decision: Decision, capacity: Capacity
    ) -> bool:
        """Return whether a predictive policy expects more than the current capacity, at its
        own horizon or, with a prefetch lead, that much further ahead."""
        pairs = zip(runtime.spec.policies, decision.recommendations, strict=True)
        for position, (policy, recommendation) in enumerate(pairs):
            if not isinstance(policy, Predictive):
                continue
            if recommendation.valid and recommendation.desired > capacity.current:
                return True
            history = runtime.policy_states[position]
            if self._prefetch_lead_s > 0 and isinstance(history, LoadHistory):
                horizon = policy.horizon(capacity.time_to_ready_s) + self._prefetch_lead_s
                forecast, _ = policy.forecast(history, decision.at, horizon)
                if forecast is not None and ceil_count(forecast / policy.target) > capacity.current:
                    return True
        return False

    def _apply(self, runtime: EndpointRuntime, decision: Decision, log_changes: bool) -> None:
        runtime.last_decision = decision
        desired = decision.desired
        if log_changes and desired != decision.current:
            logger.info("endpoint %s: %s", decision.endpoint, decision.reason)
        at_zero = desired == 0
        if runtime.requested != desired:
            runtime.requested = desired
            runtime.cached_capacity = None
            # ``watch`` marks the endpoints whose requested capacity is zero.
            self._store.watch[runtime.index] = at_zero
        if at_zero:
            if runtime.zero_since is None:
                runtime.zero_since = decision.at
        else:
            runtime.zero_since = None

    def _deliver(self, decision: Decision) -> None:
        for callback in self._callbacks:
            try:
                callback(decision)
            except Exception:
                logger.exception("decision callback %r failed for %s", callback, decision.endpoint)
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                self.dropped_decisions += 1
                logger.warning("decision consumer is behind; dropped the oldest queued decision")
            queue.put_nowait(decision)

    # -- state -------------------------------------------------------------------------------

    def state(self, endpoint: str) -> EndpointState:
        """Return a snapshot of ``endpoint``; raise ``UnknownEndpointError`` if undeclared."""
        runtime = self._endpoint(endpoint)
        capacity = runtime.capacity()
        return EndpointState(
            name=endpoint,
            desired=runtime.requested,
            current=capacity.current,
            ready=capacity.ready,
            pending=capacity.pending,
            draining=runtime.instances.draining,
            timed_out=len(runtime.instances.silent),
            time_to_ready_s=capacity.time_to_ready_s,
            last_decision=runtime.last_decision,
            policy_states={
                p.name: s for p, s in zip(runtime.spec.policies, runtime.policy_states, strict=True)
            },
        )

    @property
    def series_count(self) -> int:
        """Number of stored series, including those of gone instances not dropped yet."""
        return self._store.stored

    @property
    def state_nbytes(self) -> int:
        """Bytes allocated by window tables and per-series arrays."""
        return self._store.nbytes

    # -- decisions stream and lifecycle ------------------------------------------------------

    def add_callback(self, callback: DecisionCallback) -> None:
        """Call ``callback`` with every emitted decision; exceptions it raises are logged."""
        self._callbacks.append(callback)

    async def decisions(self) -> AsyncIterator[Decision]:
        """Yield emitted decisions until the engine stops."""
        self._check_open()
        queue: asyncio.Queue[Decision | None] = asyncio.Queue(self._queue_size + 1)
        self._subscribers.append(queue)
        try:
            while True:
                decision = await queue.get()
                if decision is None:
                    return
                yield decision
        finally:
            self._subscribers.remove(queue)

    async def start(self) -> None:
        """Start the background evaluation task on the running event loop."""
        self._check_open()
        if self._task is not None:
            raise RuntimeError("engine already started")
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="warmstart-engine")
        logger.info("engine started with %d endpoint(s)", len(self._ordered))

    async def stop(self) -> None:
        """Stop the background task and end every ``decisions()`` iterator. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        logger.info("engine stopped")

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("engine is stopped; create a new Engine")

    async def _run(self) -> None:
        assert self._wake is not None
        wake = self._wake
        shortest_interval_s = min((e.spec.interval_s for e in self._ordered), default=1.0)
        while True:
            try:
                self.tick()
                deadline = self.next_due()
            except Exception:
                logger.exception("evaluation failed; retrying in %gs", shortest_interval_s)
                deadline = None
            if deadline is None:
                deadline = self.clock.now() + shortest_interval_s
            sleeper = asyncio.ensure_future(self.clock.sleep_until(deadline))
            waker = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
            if wake.is_set():
                wake.clear()
                try:
                    self._evaluate_woken()
                except Exception:
                    logger.exception("evaluation after a sample at zero capacity failed")

    def _evaluate_woken(self) -> None:
        now = self.clock.now()
        self.flush()
        at_zero = [e for e in self._ordered if e.requested == 0 and e.zero_since is not None]
        woken = [
            e
            for e in at_zero
            if e.zero_since is not None and self._store.last_active[e.index] > e.zero_since
        ]
        if woken:
            self._evaluate(woken, now)

"""Series interning, sample validation and vectorized ingestion into bucket tables.

A series is one ``(endpoint, metric, instance)`` triple, interned to an integer id the first
time it is seen. Per-series state lives in flat numpy arrays indexed by that id, and each series
owns one row of a ``BucketTable``.

Time base: windows use event time, corrected per series for the producer's clock offset when
``skew_correction`` is on (the default). The engine keeps, per series, the producer's *lead*:
the largest ``timestamp_s - receive_time`` seen, which is the producer's clock offset minus the
smallest delivery delay. A sample is placed at ``timestamp_s - lead``, so the newest sample of a
series lands at its receive time and older ones keep their spacing. A producer 90 s ahead or 90 s
behind therefore fills the same buckets as an exact one. When the newest sample of a call
arrives more than ``resync_after_s`` later than the lead predicts, the engine treats it as a step
of the producer's clock and takes the new offset. A sample whose raw timestamp is more than
``max_skew_s`` from its receive time is rejected (too old or too far in the future).

With ``skew_correction`` off, samples are placed at their raw timestamps and rejected if they
are more than ``max_future_s`` ahead of the engine clock. Use this when producers share the
engine's clock, as in a replay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from warmstart.engine.liveness import InstanceClocks
from warmstart.engine.samples import MAX_ABS_VALUE, REASON_CODES, RejectReason
from warmstart.engine.window import BucketTable, Statistic

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Codes = npt.NDArray[np.int8]
_T = TypeVar("_T", bound=np.generic)

_CODE = {reason: np.int8(index) for index, reason in enumerate(REASON_CODES)}


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """Validation limits for samples; every duration is in seconds.

    ``max_series_per_endpoint`` bounds the live series (metric and instance pairs) of one
    endpoint: those whose instance is not gone and that had a sample, or were created, within
    their metric's ``stale_after_s``. Samples that would create a series beyond it are rejected
    as ``too_many_series``. Series of gone or silent instances do not count, so pods that come
    and go never fill it. ``SeriesStore.collect`` frees the memory of gone instances' series.
    """

    skew_correction: bool = True
    max_skew_s: float = 900.0
    resync_after_s: float = 30.0
    max_future_s: float = 2.0
    max_series_per_endpoint: int = 50_000

    def __post_init__(self) -> None:
        for name in ("max_skew_s", "resync_after_s", "max_future_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
        limit = self.max_series_per_endpoint
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_series_per_endpoint must be a positive integer, got {limit!r}")

    @property
    def future_margin_s(self) -> float:
        """How far past the engine clock an accepted sample can be placed, in seconds."""
        return 0.0 if self.skew_correction else self.max_future_s


# A public series id is its slot plus its slot's generation times 2**32, so an id of a dropped
# series never names the series that reuses its slot.
_SLOT_BITS = 32
_SLOT_MASK = (1 << _SLOT_BITS) - 1
# ``collect`` drops series once this many, or a quarter of a table's rows, can be dropped, so
# the cost of compacting a table is spread over many drops.
MIN_DROP = 64


def _grown(old: npt.NDArray[_T], size: int, capacity: int, fill: object) -> npt.NDArray[_T]:
    new = np.full(capacity, fill, dtype=old.dtype)
    new[:size] = old[:size]
    return new


class SeriesStore:
    """Interned series, their per-series state arrays and their bucket tables.

    Per-series arrays are indexed by slot. A public series id (from ``keys`` and ``add_series``)
    is ``slot + generation[slot] * 2**32``, and ``ingest`` rejects an id whose generation is
    not the slot's current one as ``unknown_series``. ``used`` is False for a free slot.
    ``table_id`` and ``row`` locate the series' buckets and ``group`` is its (endpoint,
    metric) index. ``instance_of`` is the number of its instance in ``instances``. ``last_ts``
    is the placed time of its newest sample (-inf: none) and ``lead`` its producer clock lead
    in seconds (NaN: none yet). ``active`` is False once its instance is gone, ``ready`` True
    while it is ready. The rows of a table keep the order in which their series were created,
    also after ``collect`` compacts the table, so sums over rows add in the same order as in a
    store that never drops a series.
    """

    table_id: npt.NDArray[np.int32]
    row: npt.NDArray[np.int64]
    group: npt.NDArray[np.int32]
    endpoint: npt.NDArray[np.int32]
    instance_of: IntArray
    nonnegative: npt.NDArray[np.bool_]
    stale_after_s: FloatArray
    # Clock time at which each series was created.
    created_s: FloatArray
    generation: IntArray
    used: npt.NDArray[np.bool_]
    last_ts: FloatArray
    lead: FloatArray
    active: npt.NDArray[np.bool_]
    ready: npt.NDArray[np.bool_]

    def __init__(self, config: IngestConfig, n_endpoints: int) -> None:
        self.config = config
        self.tables: list[BucketTable] = []
        self._table_sids: list[IntArray] = []
        # Key to public id, and slot to key for the slots in use.
        self.keys: dict[tuple[str, str, str], int] = {}
        self._key_of: dict[int, tuple[str, str, str]] = {}
        # (endpoint, instance) to the slots of the instance's series.
        self.instance_series: dict[tuple[int, str], list[int]] = {}
        self.instances = InstanceClocks(n_endpoints)
        # Slots handed out so far (the length of the per-series arrays in use), and the free
        # ones among them, reused newest first.
        self.size = 0
        self._free: list[int] = []
        self._capacity = 0
        self._allocate(64)
        # Series stored per endpoint, including those of gone instances not dropped yet.
        self.endpoint_series = np.zeros(n_endpoints, dtype=np.int64)
        # Event time of the newest sample with a value above zero, per endpoint.
        self.last_active = np.full(n_endpoints, -np.inf)
        # Endpoints whose capacity is zero: a positive sample for one of them sets `woken`.
        self.watch = np.zeros(n_endpoints, dtype=np.bool_)
        self.woken = False

    def _allocate(self, capacity: int) -> None:
        """Create the per-series arrays (first call) or grow them to ``capacity`` rows."""
        if self._capacity == 0:
            self.table_id = np.zeros(capacity, dtype=np.int32)
            self.row = np.zeros(capacity, dtype=np.int64)
            self.group = np.zeros(capacity, dtype=np.int32)
            self.endpoint = np.zeros(capacity, dtype=np.int32)
            self.instance_of = np.zeros(capacity, dtype=np.int64)
            self.nonnegative = np.zeros(capacity, dtype=np.bool_)
            self.stale_after_s = np.full(capacity, np.inf)
            self.created_s = np.full(capacity, -np.inf)
            self.generation = np.zeros(capacity, dtype=np.int64)
            self.used = np.zeros(capacity, dtype=np.bool_)
            self.last_ts = np.full(capacity, -np.inf)
            self.lead = np.full(capacity, np.nan)
            self.active = np.ones(capacity, dtype=np.bool_)
            self.ready = np.zeros(capacity, dtype=np.bool_)
        else:
            size = self.size
            self.table_id = _grown(self.table_id, size, capacity, 0)
            self.row = _grown(self.row, size, capacity, 0)
            self.group = _grown(self.group, size, capacity, 0)
            self.endpoint = _grown(self.endpoint, size, capacity, 0)
            self.instance_of = _grown(self.instance_of, size, capacity, 0)
            self.nonnegative = _grown(self.nonnegative, size, capacity, False)
            self.stale_after_s = _grown(self.stale_after_s, size, capacity, np.inf)
            self.created_s = _grown(self.created_s, size, capacity, -np.inf)
            self.generation = _grown(self.generation, size, capacity, 0)
            self.used = _grown(self.used, size, capacity, False)
            self.last_ts = _grown(self.last_ts, size, capacity, -np.inf)
            self.lead = _grown(self.lead, size, capacity, np.nan)
            self.active = _grown(self.active, size, capacity, True)
            self.ready = _grown(self.ready, size, capacity, False)
        self._capacity = capacity

    def add_endpoint_slot(self) -> None:
        """Grow the per-endpoint arrays by one endpoint."""
        self.endpoint_series = np.append(self.endpoint_series, 0)
        self.last_active = np.append(self.last_active, -np.inf)
        self.watch = np.append(self.watch, False)
        self.instances.add_endpoint_slot()

    def forget_endpoint(self, endpoint: int) -> None:
        """Drop every series of ``endpoint``, so its names are unknown again."""
        size = self.size
        self.drop(np.flatnonzero(self.used[:size] & (self.endpoint[:size] == endpoint)))
        self.instances.forget_endpoint(endpoint)
        self.watch[endpoint] = False

    def public_id(self, slot: int) -> int:
        """Return the public series id of the series in ``slot``."""
        return slot + (int(self.generation[slot]) << _SLOT_BITS)

    def slot_of(self, sid: int) -> int:
        """Return the slot of a public series id that ``keys`` or ``add_series`` returned."""
        return sid & _SLOT_MASK

    def collect(self, now: float) -> int:
        """Drop the series that no evaluation can read any more; return how many were dropped.

        A series can be dropped when its instance is gone (``active`` is False) and its newest
        sample lies before the ring of its table at clock time ``now``. Then no window ending at
        ``now`` or later covers a sample of it. Evaluations read no series of a gone instance,
        and the ring would hide its samples from any later reader, so dropping it changes no
        decision as long as the instance neither sends samples nor comes back. Two cases differ
        from a store that keeps everything:

        - a sample under the dropped id is rejected as ``unknown_series``, where the kept
          series would have stored it and counted a positive value as endpoint activity;
        - a later sample under the same names creates a new, active series. Its values count
          even without an instance event that brings the instance back, where the kept series
          would stay inactive and be ignored. It also learns its producer's clock lead again.

        To spread the cost of compacting a table, a table's series are dropped only once
        ``MIN_DROP`` of them, or a quarter of its rows, can be dropped. So after each call fewer
        than ``max(MIN_DROP, rows / 4)`` rows of a table hold droppable series.

        Series of an instance that stopped reporting without a ``gone`` event are not dropped
        here. The engine drops them at once when the instance times out (see
        ``EndpointSpec.instance_timeout_s``).
        """
        size = self.size
        candidates = self.used[:size] & ~self.active[:size]
        if not candidates.any():
            return 0
        droppable = np.zeros(size, dtype=np.bool_)
        table_ids = self.table_id[:size]
        for table_id, table in enumerate(self.tables):
            mine = candidates & (table_ids == table_id)
            if not mine.any():
                continue
            # The oldest bucket a window ending at ``now`` can read.
            first_readable = table.bucket_of(now) - table.n_buckets + 1
            with np.errstate(invalid="ignore"):
                newest = np.floor(self.last_ts[:size] / table.bucket_s)
            mine &= newest < first_readable
            count = int(np.count_nonzero(mine))
            if count >= MIN_DROP or count * 4 >= table.rows:
                droppable |= mine
        slots = np.flatnonzero(droppable)
        self.drop(slots)
        return int(slots.size)

    def drop(self, slots: IntArray) -> None:
        """Free ``slots``: unintern their keys, compact their table rows, reuse the slots."""
        if slots.size == 0:
            return
        dropped = np.zeros(self.size, dtype=np.bool_)
        dropped[slots] = True
        for table_id, table in enumerate(self.tables):
            sids = self._table_sids[table_id]
            rows = table.rows
            keep = ~dropped[sids[:rows]]
            if keep.all():
                continue
            kept = sids[:rows][keep]
            table.keep_rows(keep)
            sids[: kept.size] = kept
            sids[kept.size : rows] = 0
            self.row[kept] = np.arange(kept.size)

        for slot in slots.tolist():
            key = self._key_of.pop(slot)
            del self.keys[key]
            endpoint = int(self.endpoint[slot])
            instance_key = (endpoint, key[2])
            siblings = self.instance_series[instance_key]
            siblings.remove(slot)
            if not siblings:
                del self.instance_series[instance_key]
                self.instances.release(int(self.instance_of[slot]))
            self.endpoint_series[endpoint] -= 1

        self.used[slots] = False
        self.active[slots] = False
        self.ready[slots] = False
        self.generation[slots] += 1
        self.last_ts[slots] = -np.inf
        self.created_s[slots] = -np.inf
        self.lead[slots] = np.nan
        self._free.extend(slots.tolist())

    def table_for(self, bucket_s: float, n_buckets: int) -> int:
        """Return the id of the table with these dimensions, creating it if needed."""
        for index, table in enumerate(self.tables):
            if table.bucket_s == bucket_s and table.n_buckets == n_buckets:
                return index
        self.tables.append(BucketTable(bucket_s, n_buckets))
        self._table_sids.append(np.zeros(64, dtype=np.int64))
        return len(self.tables) - 1

    def table_series(self, table_id: int) -> IntArray:
        """Return the series ids of a table's rows, in row order."""
        return self._table_sids[table_id][: self.tables[table_id].rows]

    def add_series(
        self,
        key: tuple[str, str, str],
        *,
        table_id: int,
        group: int,
        endpoint: int,
        nonnegative: bool,
        stale_after_s: float,
        ready: bool,
        created_s: float,
        watched: bool = True,
    ) -> int:
        """Intern ``key`` and return its new public series id.

        ``watched`` makes its instance one that can time out (see ``InstanceClocks``); pass
        False for an instance that is launched and not ready.
        """
        if self._free:
            sid = self._free.pop()
        else:
            if self.size == self._capacity:
                self._allocate(self._capacity * 2)
            sid = self.size
            self.size += 1
        table = self.tables[table_id]
        row = table.add_row()
        sids = self._table_sids[table_id]
        if row >= sids.size:
            sids = np.concatenate([sids, np.zeros(sids.size, dtype=np.int64)])
            self._table_sids[table_id] = sids
        sids[row] = sid
        self.table_id[sid] = table_id
        self.row[sid] = row
        self.group[sid] = group
        self.endpoint[sid] = endpoint
        number = self.instances.number(endpoint, key[2])
        self.instance_of[sid] = number
        if watched:
            self.instances.watched[number] = True
        self.nonnegative[sid] = nonnegative
        self.stale_after_s[sid] = stale_after_s
        self.created_s[sid] = created_s
        self.ready[sid] = ready
        self.active[sid] = True
        self.used[sid] = True
        self.last_ts[sid] = -np.inf
        self.lead[sid] = np.nan
        public = self.public_id(sid)
        self.keys[key] = public
        self._key_of[sid] = key
        self.instance_series.setdefault((endpoint, key[2]), []).append(sid)
        self.endpoint_series[endpoint] += 1
        return public

    @property
    def stored(self) -> int:
        """Number of series stored (interned and not dropped)."""
        return self.size - len(self._free)

    def live_series(self, endpoint: int, now: float) -> int:
        """Count the series of ``endpoint`` whose instance is not gone and that had a sample,
        or were created, within their ``stale_after_s`` before clock time ``now``."""
        size = self.size
        newest = np.maximum(self.last_ts[:size], self.created_s[:size])
        live = (
            (self.endpoint[:size] == endpoint)
            & self.used[:size]
            & self.active[:size]
            & (newest >= now - self.stale_after_s[:size])
        )
        return int(np.count_nonzero(live))

    @property
    def nbytes(self) -> int:
        """Bytes allocated by bucket tables and per-series arrays (not the key dictionary)."""
        per_series = sum(
            array.nbytes
            for array in (
                self.table_id,
                self.row,
                self.group,
                self.endpoint,
                self.instance_of,
                self.nonnegative,
                self.stale_after_s,
                self.created_s,
                self.generation,
                self.used,
                self.last_ts,
                self.lead,
                self.active,
                self.ready,
            )
        )
        return per_series + sum(table.nbytes for table in self.tables)

    def ingest(
        self,
        sids: IntArray,
        timestamps: FloatArray,
        values: FloatArray,
        receive_s: float | FloatArray,
        now: float,
    ) -> Codes:
        """Validate and store samples; return one reject code per sample (-1: accepted).

        ``sids`` are public series ids. ``receive_s`` is the engine clock reading when each
        sample arrived and ``now`` the reading at this call, both in seconds, with
        ``receive_s <= now``.
        """
        config = self.config
        codes = np.full(sids.size, -1, dtype=np.int8)

        def reject(mask: npt.NDArray[np.bool_], reason: RejectReason) -> None:
            codes[mask & (codes < 0)] = _CODE[reason]

        slots = sids & _SLOT_MASK
        in_range = (sids >= 0) & (slots < self.size)
        slots = np.where(in_range, slots, 0)
        known = in_range & self.used[slots] & (self.generation[slots] == sids >> _SLOT_BITS)
        reject(~known, RejectReason.UNKNOWN_SERIES)
        safe = np.where(known, slots, 0)
        reject(~np.isfinite(timestamps), RejectReason.INVALID_TIMESTAMP)
        reject(np.isnan(values), RejectReason.NAN_VALUE)
        reject(np.isinf(values), RejectReason.INFINITE_VALUE)
        reject((values < 0) & self.nonnegative[safe], RejectReason.NEGATIVE_COUNT)
        reject(np.abs(values) > MAX_ABS_VALUE, RejectReason.VALUE_OUT_OF_RANGE)

        with np.errstate(invalid="ignore"):
            offset = timestamps - receive_s
            reject(offset > config.max_skew_s, RejectReason.TOO_FAR_IN_FUTURE)
            reject(offset < -config.max_skew_s, RejectReason.TOO_OLD)
            if not config.skew_correction:
                reject(timestamps > now + config.max_future_s, RejectReason.TOO_FAR_IN_FUTURE)

        ok = codes < 0
        if not ok.any():
            return codes
        # From here on, series are named by slot.
        sids = safe
        if not ok.all():
            sids, timestamps, values = safe[ok], timestamps[ok], values[ok]
            offset = offset[ok]
        positions = np.flatnonzero(ok)

        placed = self._place(sids, timestamps, offset) if config.skew_correction else timestamps
        kept = self._store(sids, placed, values, now)
        codes[positions[~kept]] = _CODE[RejectReason.TOO_OLD]
        return codes

    def _place(self, sids: IntArray, timestamps: FloatArray, offset: FloatArray) -> FloatArray:
        """Update each series' clock lead from this call and return the corrected times."""
        unique, inverse = np.unique(sids, return_inverse=True)
        newest = np.full(unique.size, -np.inf)
        np.maximum.at(newest, inverse, offset)
        old = self.lead[unique]
        resync = np.isnan(old) | (newest < old - self.config.resync_after_s)
        self.lead[unique] = np.where(resync, newest, np.fmax(old, newest))
        result: FloatArray = timestamps - self.lead[sids]
        return result

    def _store(
        self, sids: IntArray, placed: FloatArray, values: FloatArray, now: float
    ) -> npt.NDArray[np.bool_]:
        """Write samples into their tables; return which ones were recent enough to keep."""
        kept = np.ones(sids.size, dtype=np.bool_)
        table_ids = self.table_id[sids]
        single = len(self.tables) == 1
        for table_id in range(len(self.tables)) if not single else (0,):
            table = self.tables[table_id]
            mine = None if single else table_ids == table_id
            t_sids = sids if mine is None else sids[mine]
            if t_sids.size == 0:
                continue
            t_placed = placed if mine is None else placed[mine]
            t_values = values if mine is None else values[mine]
            buckets = np.floor(t_placed / table.bucket_s).astype(np.int64)
            newest = table.bucket_of(now + self.config.future_margin_s)
            recent = buckets > newest - table.n_buckets
            if not recent.all():
                if mine is None:
                    kept = recent
                else:
                    kept[np.flatnonzero(mine)[~recent]] = False
                t_sids, t_placed = t_sids[recent], t_placed[recent]
                t_values, buckets = t_values[recent], buckets[recent]
            table.accumulate(self.row[t_sids], buckets, t_values)
            np.maximum.at(self.last_ts, t_sids, t_placed)
            positive = t_values > 0
            if positive.any():
                endpoints = self.endpoint[t_sids[positive]]
                np.maximum.at(self.last_active, endpoints, t_placed[positive])
                if self.watch[endpoints].any():
                    self.woken = True
        return kept

    def window(
        self,
        table_id: int,
        statistic: Statistic,
        window_s: float,
        half_life_s: float | None,
        now: float,
    ) -> FloatArray:
        """Compute a statistic per row of one table over the ``window_s`` s ending at ``now``."""
        table = self.tables[table_id]
        n_buckets = max(1, math.ceil(window_s / table.bucket_s - 1e-9))
        return table.statistic(statistic, table.bucket_of(now), n_buckets, half_life_s)

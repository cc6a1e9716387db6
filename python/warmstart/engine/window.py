"""Time-bucketed ring buffers for many series, stored as one set of 2-D numpy arrays.

A ``BucketTable`` contains ``n_buckets`` fixed-width buckets (``bucket_s`` seconds each) for every
series it contains; row ``r`` belongs to one series. Bucket ``b`` is the absolute bucket index
``floor(t / bucket_s)`` of the sample times ``t`` it covers, and lives in column ``b % n_buckets``.

Invariants, for every row ``r`` and column ``c``:

- ``epoch[r, c]`` is the absolute bucket index whose data the cell holds, or -1 if the cell was
  never written. A cell holds bucket ``b`` only if ``b % n_buckets == c``.
- ``total[r, c]``, ``count[r, c]`` and ``peak[r, c]`` are the sum, the number and the maximum of
  the values of all accepted samples with ``floor(t / bucket_s) == epoch[r, c]``.
- A cell whose ``epoch`` is not the bucket a reader asks for is empty for that reader: the data
  in it is older than the ring and is overwritten by the next sample that maps to it. So an
  empty bucket (a gap) and an expired one read the same way: they contribute no sample.

Worked example with ``bucket_s = 1`` and ``n_buckets = 4``: samples at t = 10.2 (value 3) and
t = 10.7 (value 5) both land in bucket 10, column 2, giving total 8, count 2, peak 5. A sample
at t = 14.1 maps to bucket 14, also column 2; the cell's epoch 10 differs, so the cell is reset
before the sample is added. A read of the window ending at bucket 14 with 4 buckets looks at
buckets 11..14 and sees only the sample at 14.1.

Memory: 28 bytes per bucket per series (int64 epoch, float64 total, int32 count, float64 peak),
so 1,792 bytes per series with the default 64 buckets; the arrays grow by doubling, so up to
twice that is allocated.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

BYTES_PER_BUCKET = 8 + 8 + 4 + 8


class Statistic(enum.Enum):
    """How one series' samples in a window become one number.

    - ``MEAN``: sum of values / number of samples.
    - ``MAX``: largest value.
    - ``SUM``: sum of values.
    - ``RATE``: sum of values / window length, in units per second; samples are increments
      (for example requests completed since the previous sample).
    - ``EWMA``: mean of the per-bucket means, each weighted by ``2 ** (-age_s / half_life_s)``,
      where ``age_s`` is the bucket's distance in seconds from the newest bucket of the window.
      Empty buckets carry no weight.
    """

    MEAN = "mean"
    MAX = "max"
    SUM = "sum"
    RATE = "rate"
    EWMA = "ewma"


class BucketTable:
    """Ring buffers of ``n_buckets`` buckets of ``bucket_s`` seconds for a growing set of rows."""

    epoch: IntArray
    total: FloatArray
    count: npt.NDArray[np.int32]
    peak: FloatArray

    def __init__(self, bucket_s: float, n_buckets: int, initial_rows: int = 64) -> None:
        if not (math.isfinite(bucket_s) and bucket_s > 0):
            raise ValueError(f"bucket_s must be a positive number of seconds, got {bucket_s!r}")
        if n_buckets < 2:
            raise ValueError(f"n_buckets must be at least 2, got {n_buckets!r}")
        self.bucket_s = float(bucket_s)
        self.n_buckets = int(n_buckets)
        self.rows = 0
        self._allocate(max(1, initial_rows))

    def _allocate(self, capacity: int) -> None:
        shape = (capacity, self.n_buckets)
        epoch = np.full(shape, -1, dtype=np.int64)
        total = np.zeros(shape, dtype=np.float64)
        count = np.zeros(shape, dtype=np.int32)
        peak = np.full(shape, -np.inf, dtype=np.float64)
        if self.rows:
            epoch[: self.rows] = self.epoch[: self.rows]
            total[: self.rows] = self.total[: self.rows]
            count[: self.rows] = self.count[: self.rows]
            peak[: self.rows] = self.peak[: self.rows]
        self.epoch = epoch
        self.total = total
        self.count = count
        self.peak = peak

    @property
    def capacity(self) -> int:
        """Number of rows allocated."""
        return int(self.epoch.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the bucket arrays."""
        return int(self.epoch.nbytes + self.total.nbytes + self.count.nbytes + self.peak.nbytes)

    def add_row(self) -> int:
        """Allocate an empty row and return its index."""
        if self.rows == self.capacity:
            self._allocate(self.capacity * 2)
        row = self.rows
        self.rows += 1
        return row

    def keep_rows(self, keep: npt.NDArray[np.bool_]) -> None:
        """Remove the rows where ``keep`` (one flag per row in use) is False.

        The kept rows move down in their order and the freed rows at the end read as empty.
        The allocation does not shrink.
        """
        kept = np.flatnonzero(keep)
        n = kept.size
        for array, empty in (
            (self.epoch, -1),
            (self.total, 0.0),
            (self.count, 0),
            (self.peak, -np.inf),
        ):
            array[:n] = array[kept]
            array[n : self.rows] = empty
        self.rows = n

    def bucket_of(self, t: float) -> int:
        """Return the absolute bucket index of time ``t`` (seconds)."""
        return math.floor(t / self.bucket_s)

    def accumulate(self, rows: IntArray, buckets: IntArray, values: FloatArray) -> None:
        """Add samples to their buckets.

        The caller guarantees that every bucket is within the ring: no two buckets of one row in
        this call, nor any bucket written before, are ``n_buckets`` or more newer than a bucket
        passed here.
        """
        if rows.size == 0:
            return
        cells = rows * self.n_buckets + buckets % self.n_buckets
        epoch = self.epoch.reshape(-1)
        total = self.total.reshape(-1)
        count = self.count.reshape(-1)
        peak = self.peak.reshape(-1)

        expired = epoch[cells] != buckets
        if expired.any():
            reset = cells[expired]
            epoch[reset] = buckets[expired]
            total[reset] = 0.0
            count[reset] = 0
            peak[reset] = -np.inf

        np.add.at(total, cells, values)
        np.add.at(count, cells, 1)
        np.maximum.at(peak, cells, values)

    def _window_slices(self, newest_bucket: int, n: int) -> list[tuple[slice, IntArray]]:
        """Return the column slices covering the window and the bucket each column must hold.

        A window that wraps around the end of the ring is two slices. Slicing, unlike fancy
        indexing, lets the reductions read the arrays without copying them.
        """
        first_bucket = newest_bucket - n + 1
        first = first_bucket % self.n_buckets
        head = min(n, self.n_buckets - first)
        parts = [(slice(first, first + head), np.arange(first_bucket, first_bucket + head))]
        if head < n:
            parts.append((slice(0, n - head), np.arange(first_bucket + head, newest_bucket + 1)))
        return parts

    def statistic(
        self,
        statistic: Statistic,
        newest_bucket: int,
        n_buckets: int,
        half_life_s: float | None = None,
    ) -> FloatArray:
        """Compute ``statistic`` per row over ``n_buckets`` buckets ending at ``newest_bucket``.

        Rows without a sample in the window get NaN. ``half_life_s`` (seconds) is required for
        ``Statistic.EWMA``.
        """
        n_buckets = min(n_buckets, self.n_buckets)
        rows = self.rows
        if statistic is Statistic.EWMA:
            if half_life_s is None or not half_life_s > 0:
                raise ValueError(f"half_life_s must be positive for EWMA, got {half_life_s!r}")
            return self._ewma(newest_bucket, n_buckets, half_life_s)

        n_samples = np.zeros(rows, dtype=np.int64)
        sums = np.zeros(rows)
        peak = np.full(rows, -np.inf)
        for columns, wanted in self._window_slices(newest_bucket, n_buckets):
            valid = self.epoch[:rows, columns] == wanted
            n_samples += self.count[:rows, columns].sum(axis=1, where=valid, dtype=np.int64)
            if statistic is Statistic.MAX:
                np.maximum(
                    peak,
                    self.peak[:rows, columns].max(axis=1, where=valid, initial=-np.inf),
                    out=peak,
                )
            else:
                sums += self.total[:rows, columns].sum(axis=1, where=valid)
        empty = n_samples == 0

        if statistic is Statistic.MAX:
            return np.where(empty, np.nan, peak)
        if statistic is Statistic.MEAN:
            mean: FloatArray = np.divide(sums, n_samples, out=np.full(rows, np.nan), where=~empty)
            return mean
        if statistic is Statistic.SUM:
            return np.where(empty, np.nan, sums)
        if statistic is Statistic.RATE:
            return np.where(empty, np.nan, sums / (n_buckets * self.bucket_s))
        raise AssertionError(f"unhandled statistic {statistic!r}")

    def _ewma(self, newest_bucket: int, n_buckets: int, half_life_s: float) -> FloatArray:
        rows = self.rows
        weighted = np.zeros(rows)
        weight_sum = np.zeros(rows)
        for columns, wanted in self._window_slices(newest_bucket, n_buckets):
            ages_s = (newest_bucket - wanted) * self.bucket_s
            weights = np.exp2(-ages_s / half_life_s)
            count = self.count[:rows, columns]
            has_data = (self.epoch[:rows, columns] == wanted) & (count > 0)
            total = self.total[:rows, columns]
            bucket_means = np.divide(total, count, out=np.zeros(total.shape), where=has_data)
            weight = np.where(has_data, weights, 0.0)
            weight_sum += weight.sum(axis=1)
            weighted += (bucket_means * weight).sum(axis=1)
        ewma: FloatArray = np.divide(
            weighted, weight_sum, out=np.full(rows, np.nan), where=weight_sum > 0
        )
        return ewma

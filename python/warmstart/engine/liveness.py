"""Instance timeouts: find instances that stopped reporting without a ``gone`` event.

An instance is silent when none of its active series had a sample, or was created, and it had
no instance event within its endpoint's ``EndpointSpec.effective_instance_timeout_s``. The
engine then drops its series, so they stop holding scale-down (see
``Engine._time_out_silent``). ``InstanceClocks`` numbers the instances of every endpoint, so
one evaluation pass can find the silent ones with a few numpy operations over all series
instead of a Python loop over instances.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from warmstart.engine.instances import InstanceEvent

if TYPE_CHECKING:
    from warmstart.engine.series import SeriesStore

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_T = TypeVar("_T", bound=np.generic)


def _grown(old: npt.NDArray[_T], capacity: int, fill: object) -> npt.NDArray[_T]:
    new = np.full(capacity, fill, dtype=old.dtype)
    new[: old.size] = old
    return new


class InstanceClocks:
    """Per instance: its endpoint, when it was last heard from and whether it can time out.

    ``heard_s`` is a lower bound of the clock time of the instance's newest sample, series
    creation or instance event: events raise it at once, samples when ``silent`` reads them.

    An instance gets a number when it first has a series or an instance event, and keeps it
    while it has a series or a phase in its endpoint's ``InstanceTracker`` (``has_phase``).
    ``watched`` is True while the instance can time out: since its last ready or draining
    event, or since it got a series while not launched. Launched instances are not watched,
    because a model load can take minutes without a sample, and gone or timed-out instances
    are not either.
    """

    heard_s: FloatArray
    endpoint: npt.NDArray[np.int32]
    watched: npt.NDArray[np.bool_]
    has_phase: npt.NDArray[np.bool_]

    def __init__(self, n_endpoints: int) -> None:
        # Per endpoint: the instance timeout in seconds (inf: never).
        self.timeout_s = np.full(n_endpoints, math.inf)
        self.numbers: dict[tuple[int, str], int] = {}
        self.names: dict[int, tuple[int, str]] = {}
        self._free: list[int] = []
        self.size = 0
        self.heard_s = np.full(64, -np.inf)
        self.endpoint = np.zeros(64, dtype=np.int32)
        self.watched = np.zeros(64, dtype=np.bool_)
        self.has_phase = np.zeros(64, dtype=np.bool_)

    def add_endpoint_slot(self) -> None:
        """Grow the per-endpoint timeouts by one endpoint, which never times out instances."""
        self.timeout_s = np.append(self.timeout_s, math.inf)

    @property
    def enabled(self) -> bool:
        """Whether any endpoint times out silent instances."""
        return bool(np.isfinite(self.timeout_s).any())

    def number(self, endpoint: int, name: str) -> int:
        """Return the number of instance ``name`` of ``endpoint``, giving it one if needed."""
        key = (endpoint, name)
        found = self.numbers.get(key)
        if found is not None:
            return found
        if self._free:
            found = self._free.pop()
        else:
            if self.size == self.heard_s.size:
                capacity = 2 * self.size
                self.heard_s = _grown(self.heard_s, capacity, -np.inf)
                self.endpoint = _grown(self.endpoint, capacity, 0)
                self.watched = _grown(self.watched, capacity, False)
                self.has_phase = _grown(self.has_phase, capacity, False)
            found = self.size
            self.size += 1
        self.numbers[key] = found
        self.names[found] = key
        self.endpoint[found] = endpoint
        self.heard_s[found] = -np.inf
        self.watched[found] = False
        self.has_phase[found] = False
        return found

    def record_event(
        self, endpoint: int, name: str, event: InstanceEvent, at: float, has_series: bool
    ) -> None:
        """Record instance event ``event`` of ``name`` at clock time ``at`` (seconds)."""
        if event is InstanceEvent.GONE:
            number = self.numbers.get((endpoint, name))
            if number is None:
                return
            self.has_phase[number] = False
            self.watched[number] = False
            if not has_series:
                self.release(number)
            return
        number = self.number(endpoint, name)
        self.has_phase[number] = True
        # NOTE: a launch that fails without a gone event therefore stays pending for good.
        self.watched[number] = event is not InstanceEvent.LAUNCHED
        self.heard_s[number] = max(float(self.heard_s[number]), at)

    def time_out(self, number: int, has_series: bool) -> None:
        """Stop watching a silent instance, and free its number if nothing refers to it."""
        self.watched[number] = False
        if not has_series:
            self.release(number)

    def release(self, number: int) -> None:
        """Free ``number`` for reuse unless its instance still has a phase."""
        if self.has_phase[number]:
            return
        del self.numbers[self.names.pop(number)]
        self.watched[number] = False
        self._free.append(number)

    def forget_endpoint(self, endpoint: int) -> None:
        """Free the numbers of every instance of ``endpoint`` and stop timing them out."""
        self.timeout_s[endpoint] = math.inf
        for key in [key for key in self.numbers if key[0] == endpoint]:
            number = self.numbers[key]
            self.has_phase[number] = False
            self.release(number)

    def silent(self, store: SeriesStore, now: float) -> IntArray:
        """Return the numbers of the watched instances that are silent at clock time ``now``.

        Only the series of instances whose ``heard_s`` is older than the timeout are read, and
        their newest samples raise ``heard_s``. So in most passes no series is read.
        """
        n = self.size
        empty = np.zeros(0, dtype=np.int64)
        if n == 0 or not self.enabled:
            return empty
        cutoff = now - self.timeout_s[self.endpoint[:n]]
        candidates = self.watched[:n] & (self.heard_s[:n] < cutoff)
        if not candidates.any():
            return empty
        size = store.size
        instance = store.instance_of[:size]
        slots = np.flatnonzero(store.used[:size] & store.active[:size] & candidates[instance])
        newest = np.maximum(store.last_ts[slots], store.created_s[slots])
        np.maximum.at(self.heard_s, instance[slots], newest)
        return np.flatnonzero(candidates & (self.heard_s[:n] < cutoff))


# A timeout note or log line names at most this many instances and counts the rest.
NAMED_INSTANCES = 5


def describe_timeouts(timed_out: list[tuple[str, float]], timeout_s: float) -> str:
    """Return the note that names timed-out instances and when they went silent."""
    named = ", ".join(
        f"instance {name!r} silent since {since:.3f}s"
        for name, since in timed_out[:NAMED_INSTANCES]
    )
    rest = len(timed_out) - NAMED_INSTANCES
    more = f" and {rest} more" if rest > 0 else ""
    return (
        f"timed out after {timeout_s:g}s without samples or events and no longer hold "
        f"scale-down: {named}{more}"
    )

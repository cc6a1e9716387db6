"""Instance lifecycle events and the capacity and time to ready derived from them."""

from __future__ import annotations

import enum
import statistics
from collections import deque
from dataclasses import dataclass, field


class InstanceEvent(enum.Enum):
    """A step in an instance's life: launched, ready (serving), draining, gone."""

    LAUNCHED = "launched"
    READY = "ready"
    DRAINING = "draining"
    GONE = "gone"


@dataclass(slots=True)
class InstanceTracker:
    """Instances of one endpoint by phase, and the measured seconds from launch to ready.

    ``time_to_ready_s`` is the median of the last ``keep`` measured launch-to-ready times, or
    ``configured_s`` before the first measurement.
    """

    configured_s: float | None = None
    keep: int = 20
    phase: dict[str, InstanceEvent] = field(default_factory=dict)
    launched_at: dict[str, float] = field(default_factory=dict)
    measured_s: deque[float] = field(default_factory=deque)
    seen_event: bool = False
    # Instances that timed out (``time_out``) and still have a phase.
    silent: set[str] = field(default_factory=set)

    def apply(self, instance: str, event: InstanceEvent, at: float) -> None:
        """Record ``event`` for ``instance`` at clock time ``at`` (seconds)."""
        self.seen_event = True
        self.silent.discard(instance)
        if event is InstanceEvent.GONE:
            self.phase.pop(instance, None)
            self.launched_at.pop(instance, None)
            return
        if event is InstanceEvent.LAUNCHED:
            self.launched_at[instance] = at
        elif event is InstanceEvent.READY and self.phase.get(instance) is InstanceEvent.LAUNCHED:
            started = self.launched_at.get(instance)
            if started is not None and at >= started:
                self.measured_s.append(at - started)
                while len(self.measured_s) > self.keep:
                    self.measured_s.popleft()
        self.phase[instance] = event

    def time_out(self, instance: str) -> None:
        """Mark ``instance`` as silent: it sent no sample and had no event for the timeout.

        It keeps its phase, so it still counts toward capacity, but while it is ready it is
        not expected to report (``silent_ready``). Its next event or new series ends this.
        """
        if instance in self.phase:
            self.silent.add(instance)

    @property
    def silent_ready(self) -> int:
        """Ready instances that timed out and have not reported or had an event since."""
        if not self.silent:
            return 0
        return sum(1 for name in self.silent if self.phase.get(name) is InstanceEvent.READY)

    def count(self, event: InstanceEvent) -> int:
        """Return how many instances are in the phase ``event`` put them in."""
        return sum(1 for phase in self.phase.values() if phase is event)

    @property
    def ready(self) -> int:
        """Instances serving traffic."""
        return self.count(InstanceEvent.READY)

    @property
    def starting(self) -> int:
        """Instances launched and not yet ready."""
        return self.count(InstanceEvent.LAUNCHED)

    @property
    def draining(self) -> int:
        """Instances draining before removal; they count toward no capacity."""
        return self.count(InstanceEvent.DRAINING)

    @property
    def time_to_ready_s(self) -> float | None:
        """Expected seconds from launch to ready."""
        if self.measured_s:
            return float(statistics.median(self.measured_s))
        return self.configured_s

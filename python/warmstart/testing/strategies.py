"""Hypothesis strategies for metric streams, for property tests of scaling configurations.

Every strategy returns a ``MetricStream``: deliveries sorted by arrival time. Shapes give the
load over time (steady, ramp, burst). Modifiers damage a stream the way real producers do:
gaps, duplicated and out-of-order samples, skewed producer clocks, NaN bursts.
This module requires ``hypothesis``.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

from warmstart.testing.replay import Delivery, MetricStream


def _shape(values: list[float], start_s: float, interval_s: float, instances: int) -> MetricStream:
    """Spread an endpoint-level load over ``instances`` equal per-instance samples."""
    deliveries = []
    for index, value in enumerate(values):
        t = start_s + index * interval_s
        for instance in range(instances):
            deliveries.append(Delivery(t, f"i{instance}", t, value / instances))
    return tuple(deliveries)


@st.composite
def steady(
    draw: st.DrawFn,
    *,
    duration_s: float = 120.0,
    interval_s: float = 1.0,
    max_load: float = 1000.0,
    instances: int = 2,
    start_s: float = 1000.0,
) -> MetricStream:
    """Generate a constant endpoint load, sampled every ``interval_s`` seconds by each instance."""
    load = draw(st.floats(0.0, max_load, allow_nan=False))
    count = int(duration_s / interval_s)
    return _shape([load] * count, start_s, interval_s, instances)


@st.composite
def ramps(
    draw: st.DrawFn,
    *,
    duration_s: float = 120.0,
    interval_s: float = 1.0,
    max_load: float = 1000.0,
    instances: int = 2,
    start_s: float = 1000.0,
) -> MetricStream:
    """Generate a load moving linearly from one level to another over the stream."""
    begin = draw(st.floats(0.0, max_load, allow_nan=False))
    end = draw(st.floats(0.0, max_load, allow_nan=False))
    count = int(duration_s / interval_s)
    values = [begin + (end - begin) * i / max(1, count - 1) for i in range(count)]
    return _shape(values, start_s, interval_s, instances)


@st.composite
def bursts(
    draw: st.DrawFn,
    *,
    duration_s: float = 120.0,
    interval_s: float = 1.0,
    max_load: float = 1000.0,
    instances: int = 2,
    start_s: float = 1000.0,
) -> MetricStream:
    """Generate a base load with one burst of a higher load part way through."""
    base = draw(st.floats(0.0, max_load / 4, allow_nan=False))
    peak = draw(st.floats(base, max_load, allow_nan=False))
    count = int(duration_s / interval_s)
    begin = draw(st.integers(0, max(0, count - 2)))
    length = draw(st.integers(1, max(1, count - begin)))
    values = [peak if begin <= i < begin + length else base for i in range(count)]
    return _shape(values, start_s, interval_s, instances)


def load_shapes(**kwargs: float) -> st.SearchStrategy[MetricStream]:
    """Any of ``steady``, ``ramps`` or ``bursts`` with the same keyword arguments."""
    return st.one_of(steady(**kwargs), ramps(**kwargs), bursts(**kwargs))  # type: ignore[arg-type]


@st.composite
def with_gaps(draw: st.DrawFn, stream: MetricStream, max_gap_s: float = 60.0) -> MetricStream:
    """Remove every delivery in one interval of up to ``max_gap_s`` seconds."""
    if not stream:
        return stream
    first, last = stream[0].received_s, stream[-1].received_s
    begin = draw(st.floats(first, last, allow_nan=False))
    length = draw(st.floats(0.0, max_gap_s, allow_nan=False))
    return tuple(d for d in stream if not begin <= d.received_s < begin + length)


@st.composite
def with_duplicates(draw: st.DrawFn, stream: MetricStream) -> MetricStream:
    """Deliver some samples twice, the copy arriving up to 2 s later."""
    extra = []
    for delivery in stream:
        if draw(st.booleans()):
            delay = draw(st.floats(0.0, 2.0, allow_nan=False))
            extra.append(
                Delivery(
                    delivery.received_s + delay,
                    delivery.instance,
                    delivery.timestamp_s,
                    delivery.value,
                )
            )
    return tuple(sorted(stream + tuple(extra), key=lambda d: d.received_s))


@st.composite
def out_of_order(draw: st.DrawFn, stream: MetricStream, max_delay_s: float = 5.0) -> MetricStream:
    """Delay each delivery by up to ``max_delay_s`` seconds, so arrival order changes."""
    delayed = [
        Delivery(
            d.received_s + draw(st.floats(0.0, max_delay_s, allow_nan=False)),
            d.instance,
            d.timestamp_s,
            d.value,
        )
        for d in stream
    ]
    return tuple(sorted(delayed, key=lambda d: d.received_s))


@st.composite
def skewed(draw: st.DrawFn, stream: MetricStream, max_skew_s: float = 120.0) -> MetricStream:
    """Shift each instance's event timestamps by its own clock offset of up to ``max_skew_s``."""
    offsets: dict[str, float] = {}
    shifted = []
    for d in stream:
        if d.instance not in offsets:
            offsets[d.instance] = draw(st.floats(-max_skew_s, max_skew_s, allow_nan=False))
        shifted.append(
            Delivery(d.received_s, d.instance, d.timestamp_s + offsets[d.instance], d.value)
        )
    return tuple(shifted)


@st.composite
def with_nan_bursts(draw: st.DrawFn, stream: MetricStream, max_length: int = 20) -> MetricStream:
    """Replace a run of up to ``max_length`` consecutive values with NaN or infinity."""
    if not stream:
        return stream
    begin = draw(st.integers(0, len(stream) - 1))
    length = draw(st.integers(1, max_length))
    bad = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return tuple(
        Delivery(d.received_s, d.instance, d.timestamp_s, bad) if begin <= i < begin + length else d
        for i, d in enumerate(stream)
    )


@st.composite
def metric_streams(draw: st.DrawFn, /, **kwargs: float) -> MetricStream:
    """Generate a load shape with any combination of the damaging modifiers applied."""
    stream = draw(load_shapes(**kwargs))
    if draw(st.booleans()):
        stream = draw(with_gaps(stream))
    if draw(st.booleans()):
        stream = draw(with_duplicates(stream))
    if draw(st.booleans()):
        stream = draw(out_of_order(stream))
    if draw(st.booleans()):
        stream = draw(skewed(stream))
    if draw(st.booleans()):
        stream = draw(with_nan_bursts(stream))
    return stream

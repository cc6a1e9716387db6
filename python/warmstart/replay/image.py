"""The image stage of a scale-out: how long a node takes to pull and unpack an image.

The model is a fluid schedule of HTTP transfers. Each transfer waits ``first_byte_s`` (from
the moment its connection is free to the first byte, so it also includes the client's
time between two requests), then moves bytes at ``connection_bytes_per_s``, and all transfers in
flight share ``node_bytes_per_s`` equally when their sum would exceed it. Every pull starts
with one manifest request, which costs ``first_byte_s`` before any blob starts. Two pullers
are modeled:

- ``containerd``: the containerd and Docker default, 3 layers at a time with one connection
  per layer and no byte ranges, in the order the layers are given;
- ``chunked``: the layer store's puller, ``connections`` byte-range requests of ``chunk_size``
  bytes in flight across all blobs, in the layer store's order (``chunked_requests``): every
  blob's first range goes first (that request also tells whether the server honours ranges),
  the config blob's, when the caller says which blob it is, then the others largest blob
  first. The other ranges follow blob by blob, largest blob first. When a blob has more of
  them than connections, the first grow from ``chunk_size / connections`` to a whole chunk,
  as the layer store splits them.

After its download a layer is unpacked (decompressed and extracted) at ``unpack_bytes_per_s``,
one layer at a time in manifest order, as containerd applies layers. Blobs already on the node
cost no download, only their unpack.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from warmstart.store import DEFAULT_CONNECTIONS

__all__ = [
    "CONTAINERD_LAYERS_AT_ONCE",
    "Network",
    "PullTimes",
    "Puller",
    "Request",
    "chunked_requests",
    "download_times",
    "fit_connection_rate",
    "pull_times",
    "transfer_times",
]

# containerd and Docker download 3 layers at a time, one connection per layer, by default
# (containerd's `max_concurrent_downloads` and dockerd's `max-concurrent-downloads`).
CONTAINERD_LAYERS_AT_ONCE = 3


class Puller(enum.Enum):
    """Download strategy of a node: containerd defaults or the layer store's chunked pull."""

    CONTAINERD = "containerd"
    CHUNKED = "chunked"


@dataclass(frozen=True, slots=True)
class Network:
    """Transfer rates between a node and its registry.

    ``connection_bytes_per_s``: throughput of one connection, in bytes per second.
    ``node_bytes_per_s``: total throughput of the node, in bytes per second (``math.inf`` for
    no cap). ``first_byte_s``: seconds from sending a request to its first byte.
    ``unpack_bytes_per_s``: compressed bytes decompressed and extracted per second.
    ``hash_bytes_per_s``: bytes per second the node verifies (sha256) while downloading; it
    caps the total download rate like the node's network does.
    """

    connection_bytes_per_s: float
    node_bytes_per_s: float = math.inf
    first_byte_s: float = 0.0
    unpack_bytes_per_s: float = math.inf
    hash_bytes_per_s: float = math.inf

    def __post_init__(self) -> None:
        for name in (
            "connection_bytes_per_s",
            "node_bytes_per_s",
            "unpack_bytes_per_s",
            "hash_bytes_per_s",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive bytes per second, got {value!r}")
        if not (math.isfinite(self.first_byte_s) and self.first_byte_s >= 0):
            raise ValueError(
                f"first_byte_s must be non-negative seconds, got {self.first_byte_s!r}"
            )


@dataclass(frozen=True, slots=True)
class Request:
    """One byte-range request of the chunked puller: ``size`` bytes of ``layer`` from
    ``offset``."""

    layer: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class PullTimes:
    """Seconds from the start of a pull (its manifest request) until the downloads end and
    until the image is unpacked."""

    download_s: float
    total_s: float


def transfer_times(requests: Sequence[float], at_once: int, network: Network) -> list[float]:
    """Return the finish time in seconds of each request of ``requests`` (sizes in bytes).

    Requests start in order, at most ``at_once`` in flight. A request spends ``first_byte_s``
    before its bytes flow; flowing requests get ``min(connection rate, cap / flowing)``, where
    the cap is the smaller of the node's network and hashing rates.
    """
    if at_once < 1:
        raise ValueError(f"at_once must be at least 1, got {at_once!r}")
    cap = min(network.node_bytes_per_s, network.hash_bytes_per_s)
    finish = [0.0] * len(requests)
    now = 0.0
    next_request = 0
    # Requests waiting for their first byte: (time bytes start, index).
    waiting: list[tuple[float, int]] = []
    # Requests moving bytes: index -> bytes left.
    flowing: dict[int, float] = {}
    while next_request < len(requests) or waiting or flowing:
        while next_request < len(requests) and len(waiting) + len(flowing) < at_once:
            heapq.heappush(waiting, (now + network.first_byte_s, next_request))
            next_request += 1
        while waiting and waiting[0][0] <= now:
            _, index = heapq.heappop(waiting)
            flowing[index] = float(requests[index])
        rate = min(network.connection_bytes_per_s, cap / len(flowing)) if flowing else 0.0
        done_in = min(flowing.values()) / rate if flowing else math.inf
        starts_in = waiting[0][0] - now if waiting else math.inf
        step = min(done_in, starts_in)
        now += step
        for index in list(flowing):
            flowing[index] -= rate * step
            # A relative margin absorbs rounding in the subtraction above.
            if flowing[index] <= 1e-9 * max(1.0, float(requests[index])):
                del flowing[index]
                finish[index] = now
    return finish


def download_times(
    layers: Sequence[int],
    present: Sequence[bool],
    puller: Puller,
    network: Network,
    *,
    connections: int = DEFAULT_CONNECTIONS,
    chunk_size: int = 16 << 20,
    config: int | None = None,
) -> list[float]:
    """Return the second at which each layer's download ends, counted from the first blob
    request (0 for layers already present).

    ``config`` is the index in ``layers`` of the image's config blob, when it is listed. The
    chunked puller starts its first range before every other blob's, as the layer store does.
    """
    if config is not None and not 0 <= config < len(layers):
        raise ValueError(f"config index {config!r} is outside the {len(layers)} layers")
    missing = [i for i, size in enumerate(layers) if not present[i] and size > 0]
    done = [0.0] * len(layers)
    if puller is Puller.CONTAINERD:
        finish = transfer_times([layers[i] for i in missing], CONTAINERD_LAYERS_AT_ONCE, network)
        for position, layer in enumerate(missing):
            done[layer] = finish[position]
        return done
    requests = chunked_requests(layers, present, chunk_size, connections=connections, config=config)
    chunks = [float(request.size) for request in requests]
    owner = [request.layer for request in requests]
    finish = transfer_times(chunks, connections, network)
    for position, layer in enumerate(owner):
        done[layer] = max(done[layer], finish[position])
    return done


def chunked_requests(
    layers: Sequence[int],
    present: Sequence[bool],
    chunk_size: int,
    *,
    connections: int = DEFAULT_CONNECTIONS,
    config: int | None = None,
) -> list[Request]:
    """Return the range requests of a chunked pull in the order the layer store hands them to
    its connections (rust/layerstore/src/fetch/connections.rs).

    Blobs go in this order: the config blob (``config`` is its index in ``layers``), then the
    others largest first, equal sizes in manifest order. Every missing blob's first range goes
    first, in that order; then every other range, blob by blob in that order and in ascending
    offset. Present and empty blobs take no request. When a blob's ranges after its first
    are more than ``connections``, the first ``connections`` of them grow from
    ``chunk_size / connections`` to a whole chunk, as in the layer store (``ramp`` in
    rust/layerstore/src/fetch/ranges.rs), so ranges started together end one after another.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1 byte, got {chunk_size!r}")
    if connections < 1:
        raise ValueError(f"connections must be at least 1, got {connections!r}")
    missing = [i for i, size in enumerate(layers) if not present[i] and size > 0]
    order = sorted(missing, key=lambda i: (i != config, -layers[i]))
    first = [Request(layer, 0, min(chunk_size, layers[layer])) for layer in order]
    later = [
        request
        for layer in order
        for request in _ramp(layer, layers[layer], connections, chunk_size)
    ]
    return first + later


def _ramp(layer: int, size: int, connections: int, chunk_size: int) -> list[Request]:
    """Return the requests after the first of a blob of ``size`` bytes, as the layer store
    splits them.

    They are whole chunks when they fit in one round of the connections. Otherwise the first
    ``connections`` grow to a whole chunk, and the rest are whole chunks.
    """
    chunks_left = -(-size // chunk_size) - 1
    workers = connections if chunks_left > connections else 1

    def ramp_end(pieces: int) -> int:
        return chunk_size * (pieces * (pieces + 1) // 2) // workers

    requests: list[Request] = []
    offset = chunk_size
    while offset < size:
        index = len(requests)
        piece = max(ramp_end(index + 1) - ramp_end(index), 1) if index < workers else chunk_size
        requests.append(Request(layer, offset, min(piece, size - offset)))
        offset += piece
    return requests


def pull_times(
    layers: Sequence[int],
    network: Network,
    puller: Puller = Puller.CONTAINERD,
    *,
    present: Sequence[bool] | None = None,
    connections: int = DEFAULT_CONNECTIONS,
    chunk_size: int = 16 << 20,
    config: int | None = None,
) -> PullTimes:
    """Model the pull of an image with layer sizes ``layers`` (bytes, manifest order).

    The manifest request comes first and takes ``first_byte_s``, even when every layer is
    present. ``present[i]`` marks layers already in the node's store: they are unpacked but
    not downloaded. ``connections``, ``chunk_size`` (bytes) and ``config`` (the index of the
    config blob in ``layers``, see ``download_times``) apply to the chunked puller.
    """
    if any(size < 0 for size in layers):
        raise ValueError("layer sizes must be non-negative bytes")
    have = list(present) if present is not None else [False] * len(layers)
    if len(have) != len(layers):
        raise ValueError(f"present has {len(have)} entries for {len(layers)} layers")
    manifest_s = network.first_byte_s
    done = download_times(
        layers,
        have,
        puller,
        network,
        connections=connections,
        chunk_size=chunk_size,
        config=config,
    )
    unpacked = manifest_s
    for size, downloaded in zip(layers, done, strict=True):
        unpacked = max(unpacked, manifest_s + downloaded) + size / network.unpack_bytes_per_s
    return PullTimes(download_s=manifest_s + max(done, default=0.0), total_s=unpacked)


def fit_connection_rate(
    layers: Sequence[int],
    target_s: float,
    network: Network,
    puller: Puller = Puller.CONTAINERD,
) -> float:
    """Return the per-connection rate (bytes per second) at which pulling ``layers`` takes
    ``target_s`` seconds, keeping the other fields of ``network``.

    Raise ``ValueError`` when ``target_s`` is below what first-byte and unpack time allow.
    """

    def total(rate: float) -> float:
        trial = dataclasses.replace(network, connection_bytes_per_s=rate)
        return pull_times(layers, trial, puller).total_s

    low, high = 1.0, 1e12
    if total(high) > target_s:
        raise ValueError(
            f"no connection rate pulls these layers in {target_s} s; first-byte and unpack "
            f"time alone take {total(high):.1f} s"
        )
    # The total falls as the rate rises, so bisect on a log scale.
    for _ in range(200):
        middle = math.sqrt(low * high)
        if total(middle) > target_s:
            low = middle
        else:
            high = middle
        if high / low < 1 + 1e-9:
            break
    return high

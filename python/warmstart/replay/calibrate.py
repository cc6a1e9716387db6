"""Calibration: measure real pulls through the layer store and fit the image-stage model.

``calibrate`` pulls one image into fresh temporary stores four times. The first pull uses
the containerd strategy: 3 connections and ranges larger than any blob, so one connection per
blob and 3 blobs at once, largest blob first. The second and third use the chunked strategy,
the third with half the connections and twice the range size. The fourth is warm. The first
two fit the model: their manifest requests give the first-byte time, the containerd pull's
per-blob times the per-connection rate, and the chunked pull's total the node cap. The third
checks the fit on a pull it never saw.

The download comparisons leave unpacking out. The unpack rate is measured separately by a
flatten unpack of the chunked pull's image, or kept from the base profile for an artifact
without image layers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import json
import logging
import math
import shutil
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from warmstart import LayerStore, PullReport
from warmstart.errors import WarmstartError
from warmstart.replay.image import CONTAINERD_LAYERS_AT_ONCE, Network, Puller, pull_times
from warmstart.replay.profile import Profile
from warmstart.store import DEFAULT_CONNECTIONS

__all__ = [
    "Calibration",
    "Measurement",
    "calibrate",
    "fit_network",
    "fit_node_cap",
    "fit_size_warning",
    "profile_toml",
]

logger = logging.getLogger("warmstart.replay.calibrate")

# A range this large is never split, so every blob is one request on one connection.
_WHOLE_BLOB_CHUNK = 1 << 50

# NOTE: an estimate. Each blob has fixed costs the model leaves out (a new connection, the
# fsync and rename into the store), of milliseconds to tens of milliseconds. Moving bytes for
# this long per connection keeps them to a few percent of a blob's time, so the fit measures the
# rate and not those costs.
MIN_FIT_TRANSFER_S = 0.25


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured pull: its strategy, measured and modeled download seconds, and bytes."""

    name: str
    puller: Puller
    connections: int
    chunk_size: int
    measured_s: float
    modeled_s: float
    bytes_fetched: int

    @property
    def error(self) -> float:
        """Relative error of the model, (modeled - measured) / measured."""
        return (self.modeled_s - self.measured_s) / self.measured_s if self.measured_s else 0.0


@dataclass(frozen=True, slots=True)
class Calibration:
    """The fitted network, the pulled image's blob sizes, and the measured runs."""

    reference: str
    network: Network
    layers: tuple[int, ...]
    measurements: tuple[Measurement, ...]
    # Seconds from the first blob request until each blob of ``layers`` was committed, in the
    # containerd-strategy pull that the rate is fitted to (0 for a blob found in the store).
    fit_blob_seconds: tuple[float, ...] = ()
    # Reasons to distrust the fit, such as an image too small for it, one line each.
    warnings: tuple[str, ...] = ()
    # The index in ``layers`` of the image config blob, or None when the manifest has none.
    config: int | None = None


def fit_size_warning(fitted_bytes: int, blobs: int, network: Network, base: Network) -> str | None:
    """Return a warning when ``fitted_bytes`` in ``blobs`` blobs are too few for a reliable
    rate fit, or None when they are enough.

    The fit needs its 3 connections to move bytes for ``MIN_FIT_TRANSFER_S`` each. The rate
    that sizes this is the faster of the fitted and the base profile's per-connection rate,
    because fixed costs that a too-small image cannot separate from the rate make the fitted
    one too slow.
    """
    rate = max(network.connection_bytes_per_s, base.connection_bytes_per_s)
    needed = math.ceil(CONTAINERD_LAYERS_AT_ONCE * MIN_FIT_TRANSFER_S * rate)
    if fitted_bytes >= needed:
        return None
    return (
        f"the image has {fitted_bytes:,} bytes in {blobs} blobs, and a reliable fit needs at "
        f"least {needed / 1e6:.1f} MB: enough for each of the {CONTAINERD_LAYERS_AT_ONCE} "
        f"connections of the fit pull to move bytes for {MIN_FIT_TRANSFER_S:g} s at "
        f"{rate / 1e6:.1f} MB/s. With less, fixed costs per blob (a connection, fsync) pass "
        "for transfer time and the fitted rate can be far off; calibrate with a larger image"
    )


def fit_network(
    sizes: Sequence[int],
    seconds: Sequence[float],
    base: Network,
    *,
    first_byte_s: float,
    at_once: int = CONTAINERD_LAYERS_AT_ONCE,
) -> Network:
    """Fit the per-connection rate to the blobs of a pull with one connection per blob,
    ``at_once`` blobs at a time, for a known first-byte time.

    ``sizes`` (bytes) are in the order the blobs got a connection, and ``seconds`` is each
    blob's time from the first blob request to its commit. In the model a blob ends after the
    requests of its connection so far: ``requests * first_byte_s + bytes / rate``, so a
    least-squares fit of relative errors over every blob gives ``1 / rate``. Which blobs share
    a connection depends on the rate, so the fit starts from each blob's own rate, repeats
    until the sharing stops changing, and keeps the best fit. Other fields come from ``base``.
    Raise ``ValueError`` without a blob that took longer than ``first_byte_s``.
    """
    pairs = [(s, t) for s, t in zip(sizes, seconds, strict=True) if s > 0 and t > first_byte_s]
    if not pairs:
        raise ValueError(
            f"no blob took longer than the first-byte time of {first_byte_s:.3f} s to fit a rate"
        )
    blob_sizes = [s for s, _ in pairs]
    blob_seconds = [t for _, t in pairs]
    fits = [
        fit
        for start in sorted({(t - first_byte_s) / s for s, t in pairs})
        if (fit := _fit_rate_from(start, blob_sizes, blob_seconds, at_once, first_byte_s))
        is not None
    ]
    if not fits:
        raise ValueError(
            f"no rate fits: the blobs ended sooner than a first-byte time of {first_byte_s:.3f} s "
            "per request allows"
        )
    best = min(fits)
    return dataclasses.replace(
        base, connection_bytes_per_s=1.0 / best[1], first_byte_s=first_byte_s
    )


def _fit_rate_from(
    start: float,
    sizes: Sequence[int],
    seconds: Sequence[float],
    at_once: int,
    first_byte_s: float,
) -> tuple[float, float] | None:
    """Fit ``seconds_per_byte`` from ``start`` until the connection chains stop changing;
    return ``(error, seconds_per_byte)``, or ``None`` when no rate fits these chains."""
    seconds_per_byte = start
    chains: list[tuple[int, int]] = []
    for _ in range(50):
        updated = _connection_chains(sizes, at_once, first_byte_s, seconds_per_byte)
        if updated == chains:
            break
        chains = updated
        fitted = _least_squares(chains, seconds, first_byte_s)
        if fitted is None:
            return None
        seconds_per_byte = fitted
    return _relative_error(chains, seconds, first_byte_s, seconds_per_byte), seconds_per_byte


def _connection_chains(
    sizes: Sequence[int], at_once: int, first_byte_s: float, seconds_per_byte: float
) -> list[tuple[int, int]]:
    """Return, for each blob, the requests and bytes its connection has moved once the blob
    ends, with blobs started in order on the first connection to free up."""
    # Free connections: (time free, requests so far, bytes so far, connection number).
    free = [(0.0, 0, 0, lane) for lane in range(at_once)]
    chains = []
    for size in sizes:
        _, requests, moved, lane = heapq.heappop(free)
        requests, moved = requests + 1, moved + size
        chains.append((requests, moved))
        ends = requests * first_byte_s + moved * seconds_per_byte
        heapq.heappush(free, (ends, requests, moved, lane))
    return chains


def _least_squares(
    chains: Sequence[tuple[int, int]], seconds: Sequence[float], first_byte_s: float
) -> float | None:
    """Return the ``seconds_per_byte`` minimizing the squared relative error of
    ``requests * first_byte_s + bytes * seconds_per_byte`` against ``seconds``, or ``None``
    when the blobs end sooner than these chains' first-byte times allow."""
    numerator = denominator = 0.0
    for (requests, moved), t in zip(chains, seconds, strict=True):
        weight = 1.0 / (t * t)
        numerator += weight * moved * (t - requests * first_byte_s)
        denominator += weight * moved * moved
    return numerator / denominator if numerator > 0 else None


def _relative_error(
    chains: Sequence[tuple[int, int]],
    seconds: Sequence[float],
    first_byte_s: float,
    seconds_per_byte: float,
) -> float:
    """Return the sum of squared relative errors of blob end times under the given chains."""
    return sum(
        ((requests * first_byte_s + moved * seconds_per_byte - t) / t) ** 2
        for (requests, moved), t in zip(chains, seconds, strict=True)
    )


def _config_index(store: LayerStore, report: PullReport) -> int | None:
    """Return the index in ``report.blobs`` of the config blob of the manifest pulled into
    ``store``, or ``None`` when the manifest lists no config."""
    manifest = json.loads(store.read(report.manifest_digest))
    config = manifest.get("config") if isinstance(manifest, dict) else None
    digest = config.get("digest") if isinstance(config, dict) else None
    digests = [blob.digest for blob in report.blobs]
    return digests.index(digest) if digest in digests else None


async def _pull(
    reference: str,
    store_path: Path,
    connections: int,
    chunk_size: int,
    insecure: list[str],
    before_pull: Callable[[], object] | None,
) -> PullReport:
    store = LayerStore(store_path)
    if before_pull is not None:
        before_pull()
    return await store.pull(
        reference, connections=connections, chunk_size=chunk_size, insecure_registries=insecure
    )


async def _fastest_pull(
    reference: str,
    store_path: Path,
    connections: int,
    chunk_size: int,
    insecure: list[str],
    repeat: int,
    before_pull: Callable[[], object] | None,
) -> PullReport:
    """Pull cold ``repeat`` times and return the fastest report; ``store_path`` keeps the
    image of that pull."""
    fastest: PullReport | None = None
    for attempt in range(repeat):
        trial = store_path.with_name(f"{store_path.name}-{attempt}")
        report = await _pull(reference, trial, connections, chunk_size, insecure, before_pull)
        if fastest is None or report.seconds < fastest.seconds:
            fastest = report
            shutil.rmtree(store_path, ignore_errors=True)
            trial.rename(store_path)
        else:
            shutil.rmtree(trial)
    assert fastest is not None
    return fastest


async def _unpack_seconds(store_path: Path, tag: str, target: Path) -> float | None:
    """Time a flatten unpack of a pulled image; ``None`` when it cannot be unpacked (an
    artifact without image layers, for example), and the base profile's rate is kept."""
    store = LayerStore(store_path)
    started = time.perf_counter()
    try:
        await asyncio.to_thread(store.unpack, tag, target, flatten=True)
    except WarmstartError as error:
        logger.warning(
            "could not unpack %s to time it (%s); keeping the base unpack rate", tag, error
        )
        return None
    return time.perf_counter() - started


def fit_node_cap(
    layers: Sequence[int],
    network: Network,
    connections: int,
    chunk_size: int,
    measured_s: float,
    *,
    config: int | None = None,
) -> float:
    """Return the node rate cap (bytes per second) at which the chunked model's download
    takes ``measured_s`` seconds, or ``inf`` when the model is not faster than that uncapped.
    ``config`` is the index of the config blob in ``layers``, as ``pull_times`` takes it.
    """

    def modeled(cap: float) -> float:
        trial = dataclasses.replace(network, node_bytes_per_s=cap, unpack_bytes_per_s=math.inf)
        return pull_times(
            layers,
            trial,
            Puller.CHUNKED,
            connections=connections,
            chunk_size=chunk_size,
            config=config,
        ).download_s

    if modeled(math.inf) >= measured_s:
        return math.inf
    low, high = 1.0, connections * network.connection_bytes_per_s
    # The download time falls as the cap rises, so bisect on a log scale.
    for _ in range(100):
        middle = math.sqrt(low * high)
        if modeled(middle) > measured_s:
            low = middle
        else:
            high = middle
        if high / low < 1 + 1e-6:
            break
    return high


async def calibrate(
    reference: str,
    base: Profile,
    *,
    connections: int = DEFAULT_CONNECTIONS,
    chunk_size: int = 16 << 20,
    insecure: bool = False,
    work_dir: Path | None = None,
    repeat: int = 1,
    before_pull: Callable[[], object] | None = None,
) -> Calibration:
    """Pull ``reference`` cold and warm, fit the network on two pulls and check it on others.

    The fit uses a cold containerd-strategy pull and a cold chunked pull (``connections``,
    ``chunk_size`` bytes), each the fastest of ``repeat`` pulls, since load on the node only
    ever adds time. Their faster manifest request gives the first-byte time, the containerd
    pull's per-blob times the per-connection rate (``fit_network``), and the chunked pull's
    total the node cap (``fit_node_cap``). Check: a cold chunked pull with half the
    connections and twice the range size, which the fit never saw, and a warm pull. Stores go
    under ``work_dir`` (a temporary directory when None) and are removed after.
    ``before_pull``, when given, is called right before each pull starts, outside its time:
    a benchmark uses it to prepare the machine the same way for every pull. Pull errors
    propagate as the store's exceptions.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1 pull, got {repeat!r}")
    hosts = [reference.split("/", 1)[0]] if insecure else []
    check_connections = max(1, connections // 2)
    check_chunk = 2 * chunk_size
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="warmstart-calibrate-") as scratch:
        root = Path(scratch)
        containerd = await _fastest_pull(
            reference, root / "one", 3, _WHOLE_BLOB_CHUNK, hosts, repeat, before_pull
        )
        config = _config_index(LayerStore(root / "one"), containerd)
        chunked = await _fastest_pull(
            reference, root / "two", connections, chunk_size, hosts, repeat, before_pull
        )
        unpack_s = await _unpack_seconds(root / "two", chunked.tag, root / "rootfs")
        three = root / "three"
        check = await _pull(reference, three, check_connections, check_chunk, hosts, before_pull)
        warm = await _pull(reference, three, check_connections, check_chunk, hosts, before_pull)

    # The manifest request is the one request of a pull that moves almost no bytes, so its
    # time is the first-byte time. The faster of the two fit pulls is kept, since a stall on
    # a loaded machine only ever adds time.
    first_byte_s = min(containerd.manifest_seconds, chunked.manifest_seconds)
    # The layer store starts the config blob first and the others largest first, and reports
    # them in that order. So with 3 connections and whole-blob ranges, the containerd pull's
    # blobs got connections in the order listed.
    blobs = [b for b in containerd.blobs if not b.reused]
    sizes, seconds = [b.size for b in blobs], [b.seconds for b in blobs]
    try:
        network = fit_network(sizes, seconds, base.registry, first_byte_s=first_byte_s)
    except ValueError as error:
        logger.warning("%s; fitting the rate of %s without a first-byte time", error, reference)
        network = fit_network(sizes, seconds, base.registry, first_byte_s=0.0)
    layers = tuple(b.size for b in containerd.blobs)
    cap = fit_node_cap(layers, network, connections, chunk_size, chunked.seconds, config=config)
    network = dataclasses.replace(network, node_bytes_per_s=cap)
    # Unpacking is measured on its own (a flatten applies layers one at a time, as the model
    # does), and the download comparisons below leave it out.
    layer_bytes = sum(b.size for b in chunked.blobs if "layer" in b.media_type)
    if unpack_s is not None and unpack_s > 0 and layer_bytes > 0:
        network = dataclasses.replace(network, unpack_bytes_per_s=layer_bytes / unpack_s)
    download = dataclasses.replace(network, unpack_bytes_per_s=math.inf)

    def modeled(puller: Puller, lanes: int, chunk: int, present: bool) -> float:
        return pull_times(
            layers,
            download,
            puller,
            present=[present] * len(layers),
            connections=lanes,
            chunk_size=chunk,
            config=config,
        ).download_s

    measurements = (
        Measurement(
            "fit",
            Puller.CONTAINERD,
            3,
            0,
            containerd.seconds,
            modeled(Puller.CONTAINERD, 3, chunk_size, False),
            containerd.bytes_fetched,
        ),
        Measurement(
            "fit",
            Puller.CHUNKED,
            connections,
            chunk_size,
            chunked.seconds,
            modeled(Puller.CHUNKED, connections, chunk_size, False),
            chunked.bytes_fetched,
        ),
        Measurement(
            "check",
            Puller.CHUNKED,
            check_connections,
            check_chunk,
            check.seconds,
            modeled(Puller.CHUNKED, check_connections, check_chunk, False),
            check.bytes_fetched,
        ),
        Measurement(
            "warm",
            Puller.CHUNKED,
            check_connections,
            check_chunk,
            warm.seconds,
            modeled(Puller.CHUNKED, check_connections, check_chunk, True),
            warm.bytes_fetched,
        ),
    )
    fit_blob_seconds = tuple(0.0 if b.reused else b.seconds for b in containerd.blobs)
    warning = fit_size_warning(sum(sizes), len(sizes), network, base.registry)
    return Calibration(
        reference,
        network,
        layers,
        measurements,
        fit_blob_seconds,
        warnings=() if warning is None else (warning,),
        config=config,
    )


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, 88) or [""]


def _number(value: float) -> str:
    return "inf" if math.isinf(value) else repr(float(value))


def _string(text: str) -> str:
    # A JSON string is a valid TOML basic string: the same quotes and escapes.
    return json.dumps(text, ensure_ascii=False)


def calibrated_description(base: Profile, calibration: Calibration) -> str:
    """Return the description of a calibrated profile: the base's would describe the base
    image, which the measured [image] replaces."""
    size_gb = sum(calibration.layers) / 1e9
    return (
        f"Calibrated from {calibration.reference}: {len(calibration.layers)} blobs, "
        f"{size_gb:.3g} GB, registry measured; service and start-up from {base.name}"
    )


def profile_toml(base: Profile, calibration: Calibration, base_source: str) -> str:
    """Return a profile TOML: ``base`` with the measured image and ``[registry]`` numbers."""
    service, startup, network = base.service, base.startup, calibration.network
    layers = ",\n".join(
        f"    {{ size = {size}, config = true }}" if index == calibration.config else f"    {size}"
        for index, size in enumerate(calibration.layers)
    )
    mirror = base.mirror
    warnings = "".join(
        f"# WARNING: {line}\n" for warning in calibration.warnings for line in _wrap(warning)
    )
    return f"""# Written by `warmstart calibrate {calibration.reference}` from {base_source}.
# [image] and [registry] are measured; every other number is the base profile's, with the
# sources its comments give there. unpack_bytes_per_s is measured by a flatten unpack of the
# pulled image when it has image layers, and keeps the base value otherwise.
{warnings}
name = {_string(base.name + "-calibrated")}
description = {_string(calibrated_description(base, calibration))}

[service]
slots = {service.slots}
target_concurrency = {_number(service.target_concurrency)}
prefill_tokens_per_s = {_number(service.prefill_tokens_per_s)}
decode_tokens_per_s = {_number(service.decode_tokens_per_s)}
overhead_s = {_number(service.overhead_s)}
objective_ttft_s = {_number(service.objective_ttft_s)}

[startup]
provision_s = {_number(startup.provision_s)}
artifacts_s = {_number(startup.artifacts_s)}
start_s = {_number(startup.start_s)}
health_s = {_number(startup.health_s)}
jitter = {_number(startup.jitter)}

[image]
# Blob sizes in bytes of {calibration.reference}, in the order the store reported them. The
# chunked model starts the blob marked config = true first, as the layer store does.
layers = [
{layers},
]

[registry]
# Fitted to the per-blob times of a cold pull with one connection per blob.
connection_bytes_per_s = {_number(network.connection_bytes_per_s)}
# The faster manifest request of two cold pulls.
first_byte_s = {_number(network.first_byte_s)}
# Fitted so the model matches a cold chunked pull (inf: no cap was reached).
node_bytes_per_s = {_number(network.node_bytes_per_s)}
unpack_bytes_per_s = {_number(network.unpack_bytes_per_s)}
hash_bytes_per_s = {_number(network.hash_bytes_per_s)}

[mirror]
connection_bytes_per_s = {_number(mirror.connection_bytes_per_s)}
node_bytes_per_s = {_number(mirror.node_bytes_per_s)}
first_byte_s = {_number(mirror.first_byte_s)}
unpack_bytes_per_s = {_number(mirror.unpack_bytes_per_s)}
hash_bytes_per_s = {_number(mirror.hash_bytes_per_s)}

[pull]
puller = "{base.puller.value}"
connections = {base.connections}
chunk_size = {base.chunk_size}
"""

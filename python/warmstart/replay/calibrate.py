"""Calibration: measure real pulls through the layer store and fit the image-stage model.

``calibrate`` pulls one image into fresh temporary stores four times. The first pull uses
the containerd strategy: 3 connections and ranges larger than any blob, so one connection per
blob and 3 blobs at once. The second and third use the chunked strategy, the third with half
the connections and twice the range size. The fourth is warm. The first two fit the model:
the smallest blob's faster time gives the first-byte time, the containerd pull's total the
per-connection rate, and the chunked pull's total the node cap. The third checks the fit on
a pull it never saw.

The download comparisons leave unpacking out. The unpack rate is measured separately by a
flatten unpack of the chunked pull's image, or kept from the base profile for an artifact
without image layers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from warmstart import LayerStore, PullReport
from warmstart.errors import WarmstartError
from warmstart.replay.image import Network, Puller, fit_connection_rate, pull_times
from warmstart.replay.profile import Profile

__all__ = [
    "Calibration",
    "Measurement",
    "calibrate",
    "fit_network",
    "fit_node_cap",
    "profile_toml",
]

logger = logging.getLogger("warmstart.replay.calibrate")

# A range this large is never split, so every blob is one request on one connection.
_WHOLE_BLOB_CHUNK = 1 << 50


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


def fit_network(sizes: Sequence[int], seconds: Sequence[float], base: Network) -> Network:
    """Fit first-byte time and per-connection rate to per-blob ``(size, seconds)`` pairs of a
    pull with one connection per blob.

    A blob's seconds include any wait for a free connection, so a least-squares line would
    mistake waits for slowness. Instead the smallest blob's time is the first-byte time, and
    the fastest blob of the others gives the rate, since waiting only ever makes a blob look
    slower. Other fields come from ``base``. Raise ``ValueError`` without a blob that took
    time.
    """
    pairs = sorted((s, t) for s, t in zip(sizes, seconds, strict=True) if s > 0 and t > 0)
    if not pairs:
        raise ValueError("no blob with a positive size and duration to fit")
    first_byte_s = pairs[0][1] if len(pairs) > 1 else 0.0
    rates = [s / (t - first_byte_s) for s, t in pairs[1:] if t > first_byte_s]
    if not rates:
        first_byte_s = 0.0
        rates = [s / t for s, t in pairs]
    return dataclasses.replace(base, connection_bytes_per_s=max(rates), first_byte_s=first_byte_s)


async def _pull(
    reference: str, store_path: Path, connections: int, chunk_size: int, insecure: list[str]
) -> PullReport:
    store = LayerStore(store_path)
    return await store.pull(
        reference, connections=connections, chunk_size=chunk_size, insecure_registries=insecure
    )


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
    layers: Sequence[int], network: Network, connections: int, chunk_size: int, measured_s: float
) -> float:
    """Return the node rate cap (bytes per second) at which the chunked model's download
    takes ``measured_s`` seconds, or ``inf`` when the model is not faster than that uncapped.
    """

    def modeled(cap: float) -> float:
        trial = dataclasses.replace(network, node_bytes_per_s=cap, unpack_bytes_per_s=math.inf)
        return pull_times(
            layers, trial, Puller.CHUNKED, connections=connections, chunk_size=chunk_size
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
    connections: int = 8,
    chunk_size: int = 16 << 20,
    insecure: bool = False,
    work_dir: Path | None = None,
) -> Calibration:
    """Pull ``reference`` four times, fit the network on two pulls and check it on the others.

    Fit: the smallest blob's faster time over a cold containerd-strategy pull and a cold
    chunked pull (``connections``, ``chunk_size`` bytes) gives the first-byte time, the
    containerd pull's total the per-connection rate, and the chunked pull's total the node cap.
    Check: a cold chunked pull with half the connections and twice the range size, which the
    fit never saw, and a warm pull. Stores go under ``work_dir`` (a temporary directory when
    None) and are removed after. Pull errors propagate as the store's exceptions.
    """
    hosts = [reference.split("/", 1)[0]] if insecure else []
    check_connections = max(1, connections // 2)
    check_chunk = 2 * chunk_size
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="warmstart-calibrate-") as scratch:
        root = Path(scratch)
        containerd = await _pull(reference, root / "one", 3, _WHOLE_BLOB_CHUNK, hosts)
        chunked = await _pull(reference, root / "two", connections, chunk_size, hosts)
        unpack_s = await _unpack_seconds(root / "two", chunked.tag, root / "rootfs")
        check = await _pull(reference, root / "three", check_connections, check_chunk, hosts)
        warm = await _pull(reference, root / "three", check_connections, check_chunk, hosts)

    # Both fit pulls time the smallest blob; the faster of the two is the first-byte time,
    # since a stall on a loaded machine only ever adds time.
    blobs = [b for b in (*containerd.blobs, *chunked.blobs) if not b.reused]
    network = fit_network([b.size for b in blobs], [b.seconds for b in blobs], base.registry)
    layers = tuple(b.size for b in containerd.blobs)
    # Refit the rate so the whole containerd pull, waits for connections included, takes
    # what it measured; per-blob times only set the first-byte time and a starting point.
    uncapped = dataclasses.replace(network, unpack_bytes_per_s=math.inf)
    try:
        rate = fit_connection_rate(layers, containerd.seconds, uncapped, Puller.CONTAINERD)
        network = dataclasses.replace(network, connection_bytes_per_s=rate)
    except ValueError:
        logger.warning(
            "pull of %s took %.3f s, less than its first-byte times allow; keeping the "
            "per-blob rate",
            reference,
            containerd.seconds,
        )
    cap = fit_node_cap(layers, network, connections, chunk_size, chunked.seconds)
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
    return Calibration(reference, network, layers, measurements)


def _number(value: float) -> str:
    return "inf" if math.isinf(value) else repr(float(value))


def profile_toml(base: Profile, calibration: Calibration, base_source: str) -> str:
    """Return a profile TOML: ``base`` with the measured image and ``[registry]`` numbers."""
    service, startup, network = base.service, base.startup, calibration.network
    layers = ",\n".join(f"    {size}" for size in calibration.layers)
    mirror = base.mirror
    return f"""# Written by `warmstart calibrate {calibration.reference}` from {base_source}.
# [image] and [registry] are measured; every other number is the base profile's, with the
# sources its comments give there. unpack_bytes_per_s is measured by a flatten unpack of the
# pulled image when it has image layers, and keeps the base value otherwise.

name = "{base.name}-calibrated"
description = "{base.description} (registry measured from {calibration.reference})"

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
# Blob sizes in bytes of {calibration.reference}, in the order the store reported them.
layers = [
{layers},
]

[registry]
# Fitted to per-blob times of a cold pull with one connection per blob.
connection_bytes_per_s = {_number(network.connection_bytes_per_s)}
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

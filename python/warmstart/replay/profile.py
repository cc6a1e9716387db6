"""Profiles: what one instance of a model serves and how long it takes to become ready.

A profile is a TOML file (see ``profiles/*.toml`` in this package) with these tables:
``[service]`` (slots, target concurrency, token rates, the latency objective), ``[startup]``
(stage times besides the image stage), ``[image]`` (layer sizes), ``[registry]`` and
``[mirror]`` (transfer rates for the image-stage model) and ``[pull]`` (the puller and its
settings). Every number in a shipped profile carries a comment with its source.
"""

from __future__ import annotations

import enum
import importlib.resources
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmstart.replay.image import Network, Puller, PullTimes, pull_times
from warmstart.replay.profile_reader import MAX_RANGES, ProfileError, ProfileReader
from warmstart.store import DEFAULT_CONNECTIONS, MAX_CONNECTIONS, MIN_CHUNK_SIZE

__all__ = [
    "DEFAULT_PROFILE",
    "STAGES",
    "CacheMode",
    "Profile",
    "ProfileError",
    "ServiceModel",
    "StartupModel",
    "builtin_profiles",
    "load_profile",
    "parse_profile",
]

DEFAULT_PROFILE = "default"

STAGES = ("provision", "image", "artifacts", "start", "health")


class CacheMode(enum.Enum):
    """Where a new instance's image comes from.

    - ``cold``: every new instance gets a new node and pulls the whole image from the registry.
    - ``node``: a new instance reuses a node that served before and was released by a
      scale-in, when one is free; that node's store has every blob, so only unpacking remains
      and no provisioning. Otherwise it starts cold.
    - ``mirror``: every new instance gets a new node and pulls from a nearby mirror.
    - ``prefetch``: standby nodes, sized by the engine's predictive policy, are provisioned
      and have the image in their store before the scale-out decision; a new instance takes a
      warm standby node when one is ready. Standby time is counted as cost.
    """

    COLD = "cold"
    NODE = "node"
    MIRROR = "mirror"
    PREFETCH = "prefetch"


@dataclass(frozen=True, slots=True)
class ServiceModel:
    """How one instance serves requests.

    ``slots``: requests served at once. ``target_concurrency``: requests in flight per
    instance the policies aim for. Token rates are per second for one request.
    ``objective_ttft_s``: the latency objective on time to first token, in seconds.
    """

    slots: int
    target_concurrency: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    overhead_s: float
    objective_ttft_s: float


@dataclass(frozen=True, slots=True)
class StartupModel:
    """Seconds spent in each scale-out stage besides the image stage, and their jitter.

    ``jitter`` is the relative half-width of the uniform spread of every stage time.
    """

    provision_s: float
    artifacts_s: float
    start_s: float
    health_s: float
    jitter: float = 0.0


@dataclass(frozen=True, slots=True)
class Profile:
    """A served model on one instance type: service, start-up stages, image and networks.

    ``layers`` are compressed layer sizes in bytes, each distinct blob once. ``config`` is
    the index in ``layers`` of the image config blob, which the chunked puller starts first,
    or ``None`` when the profile does not list or mark it.
    """

    name: str
    description: str
    service: ServiceModel
    startup: StartupModel
    layers: tuple[int, ...]
    registry: Network
    mirror: Network
    puller: Puller = Puller.CHUNKED
    connections: int = DEFAULT_CONNECTIONS
    chunk_size: int = 16 << 20
    config: int | None = None

    def image_times(self, *, mirror: bool = False, in_store: bool = False) -> PullTimes:
        """Return the modeled image stage: from the mirror or the registry, with every blob
        already in the node's store (``in_store``, unpack only) or none."""
        return pull_times(
            self.layers,
            self.mirror if mirror else self.registry,
            self.puller,
            present=[in_store] * len(self.layers),
            connections=self.connections,
            chunk_size=self.chunk_size,
            config=self.config,
        )

    def stage_times(
        self, *, mirror: bool = False, in_store: bool = False, node_exists: bool = False
    ) -> dict[str, float]:
        """Return the seconds of every stage of ``STAGES`` for one launch, without jitter.

        ``node_exists`` skips provisioning, for a node that is already up.
        """
        startup = self.startup
        return {
            "provision": 0.0 if node_exists else startup.provision_s,
            "image": self.image_times(mirror=mirror, in_store=in_store).total_s,
            "artifacts": startup.artifacts_s,
            "start": startup.start_s,
            "health": startup.health_s,
        }

    def time_to_ready_s(self, mode: CacheMode = CacheMode.COLD) -> float:
        """Return the modeled seconds from launch to ready of a new node in ``mode``."""
        return sum(self.stage_times(mirror=mode is CacheMode.MIRROR).values())


def builtin_profiles() -> list[str]:
    """Return the names of the profiles shipped with warmstart."""
    folder = importlib.resources.files("warmstart.replay") / "profiles"
    return sorted(
        entry.name.removesuffix(".toml")
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    )


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> Profile:
    """Load a built-in profile by name, or a profile TOML file by path.

    Raise ``ProfileError`` naming the file and the key for a missing or invalid value.
    """
    text_name = str(name_or_path)
    if text_name in builtin_profiles():
        resource = importlib.resources.files("warmstart.replay") / "profiles" / f"{text_name}.toml"
        source = f"built-in profile {text_name!r}"
        text = resource.read_text(encoding="utf-8")
    else:
        path = Path(name_or_path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, IsADirectoryError):
            raise ProfileError(
                f"profile {text_name!r} not found; use a TOML file path or one of "
                f"{', '.join(builtin_profiles())}"
            ) from None
        except UnicodeDecodeError as error:
            raise ProfileError(
                f"{source}: invalid UTF-8, a profile is TOML text: {error}"
            ) from None
        except OSError as error:
            raise ProfileError(f"{source}: cannot read the profile: {error}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"{source}: invalid TOML: {error}") from error
    return parse_profile(data, source)


def parse_profile(data: dict[str, Any], source: str = "profile") -> Profile:
    """Build a ``Profile`` from parsed TOML; raise ``ProfileError`` on a bad value.

    Unknown tables and keys are errors. Times and rates must be finite, except the network
    caps (node, unpack and hash rates), where ``inf`` means no cap.
    """
    reader = ProfileReader(data, source)
    service = ServiceModel(
        slots=reader.count("service", "slots", minimum=1, maximum=1_000_000),
        target_concurrency=reader.number("service", "target_concurrency", positive=True),
        # 0.001 token/s is far below any model. Near 0 (1e-300, say), service times
        # become inf and latencies NaN.
        prefill_tokens_per_s=reader.number("service", "prefill_tokens_per_s", minimum=1e-3),
        decode_tokens_per_s=reader.number("service", "decode_tokens_per_s", minimum=1e-3),
        overhead_s=reader.number("service", "overhead_s", minimum=0),
        objective_ttft_s=reader.number("service", "objective_ttft_s", positive=True),
    )
    startup = StartupModel(
        provision_s=reader.number("startup", "provision_s", minimum=0),
        artifacts_s=reader.number("startup", "artifacts_s", minimum=0),
        start_s=reader.number("startup", "start_s", minimum=0),
        health_s=reader.number("startup", "health_s", minimum=0),
        jitter=reader.number("startup", "jitter", minimum=0, default=0.0),
    )
    if startup.jitter >= 1:
        raise ProfileError(f"{source}: startup.jitter must be below 1, got {startup.jitter}")
    registry = reader.network("registry")
    puller_name = reader.table("pull").get("puller", Puller.CHUNKED.value)
    try:
        puller = Puller(puller_name)
    except ValueError:
        choices = ", ".join(p.value for p in Puller)
        raise ProfileError(
            f"{source}: pull.puller must be one of {choices}, got {puller_name!r}"
        ) from None
    layers, config = reader.layers()
    chunk_size = reader.count(
        "pull", "chunk_size", minimum=MIN_CHUNK_SIZE, maximum=1 << 40, default=16 << 20
    )
    ranges = sum(-(-size // chunk_size) for size in layers)
    if puller is Puller.CHUNKED and ranges > MAX_RANGES:
        raise ProfileError(
            f"{source}: image.layers split into {ranges} ranges of pull.chunk_size "
            f"{chunk_size} bytes, above the maximum of {MAX_RANGES}; raise pull.chunk_size"
        )
    return Profile(
        name=reader.text("name", source),
        description=reader.text("description", ""),
        service=service,
        startup=startup,
        layers=layers,
        registry=registry,
        mirror=reader.network("mirror") if "mirror" in data else registry,
        puller=puller,
        connections=reader.count(
            "pull", "connections", minimum=1, maximum=MAX_CONNECTIONS, default=DEFAULT_CONNECTIONS
        ),
        chunk_size=chunk_size,
        config=config,
    )

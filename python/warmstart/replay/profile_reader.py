"""Checked access to the tables of a parsed profile TOML, with errors that name the key."""

from __future__ import annotations

import difflib
import math
from typing import Any

from warmstart.replay.image import Network

__all__ = ["MAX_LAYER_BYTES", "MAX_RANGES", "SCHEMA", "ProfileError", "ProfileReader"]

# The largest layer a profile may list: 1 TiB, far above real image layers (a few GB), so
# a typo such as an extra digit group is caught before the model counts its ranges.
MAX_LAYER_BYTES = 1 << 40

# Maximum number of byte ranges the chunked-pull model splits an image into. The model handles each
# range in Python, so 100,000 ranges take about half a second; a 16 MiB chunk_size reaches
# the bound at 1.6 TB of layers.
MAX_RANGES = 100_000

_NETWORK_KEYS = frozenset(
    {
        "connection_bytes_per_s",
        "node_bytes_per_s",
        "first_byte_s",
        "unpack_bytes_per_s",
        "hash_bytes_per_s",
    }
)

# The keys of each table; "" is the top level.
SCHEMA: dict[str, frozenset[str]] = {
    "": frozenset(
        {"name", "description", "service", "startup", "image", "registry", "mirror", "pull"}
    ),
    "service": frozenset(
        {
            "slots",
            "target_concurrency",
            "prefill_tokens_per_s",
            "decode_tokens_per_s",
            "overhead_s",
            "objective_ttft_s",
        }
    ),
    "startup": frozenset({"provision_s", "artifacts_s", "start_s", "health_s", "jitter"}),
    "image": frozenset({"layers"}),
    "registry": _NETWORK_KEYS,
    "mirror": _NETWORK_KEYS,
    "pull": frozenset({"puller", "connections", "chunk_size"}),
}


class ProfileError(ValueError):
    """A profile file is missing, unreadable, or has an invalid value."""


def _suggestion(name: str, choices: frozenset[str]) -> str:
    close = difflib.get_close_matches(name, sorted(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class ProfileReader:
    """Typed access to the tables of a parsed profile; every error names the source and key."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.data = data
        self.source = source
        self.check_keys()

    def error(self, message: str) -> ProfileError:
        return ProfileError(f"{self.source}: {message}")

    def check_keys(self) -> None:
        """Reject unknown tables and keys, so a typo is not silently replaced by a default."""
        for key in self.data:
            if key not in SCHEMA[""]:
                raise self.error(
                    f"unknown key or table {key!r}{_suggestion(key, SCHEMA[''])} "
                    f"(known: {', '.join(sorted(SCHEMA['']))})"
                )
        for table_name, keys in SCHEMA.items():
            if not table_name or table_name not in self.data:
                continue
            for key in self.table(table_name):
                if key not in keys:
                    raise self.error(
                        f"unknown key {table_name}.{key}{_suggestion(key, keys)} "
                        f"(known in [{table_name}]: {', '.join(sorted(keys))})"
                    )

    def table(self, name: str) -> dict[str, Any]:
        table = self.data.get(name, {})
        if not isinstance(table, dict):
            raise self.error(f"[{name}] must be a table, got {table!r}")
        return table

    def text(self, key: str, default: str) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self.error(f"{key} must be a string, got {value!r}")
        return value

    def number(
        self,
        table: str,
        key: str,
        *,
        minimum: float | None = None,
        positive: bool = False,
        default: float | None = None,
        allow_inf: bool = False,
    ) -> float:
        """Read a finite number (``inf`` too with ``allow_inf``), at least ``minimum`` and
        above 0 when ``positive``."""
        value = self.table(table).get(key, default)
        if value is None:
            raise self.error(f"missing {table}.{key}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"{table}.{key} must be a number, got {value!r}")
        number = float(value)
        if math.isnan(number) or (math.isinf(number) and not (allow_inf and number > 0)):
            raise self.error(f"{table}.{key} must be a finite number, got {value!r}")
        if positive and not number > 0:
            raise self.error(f"{table}.{key} must be positive, got {value!r}")
        if minimum is not None and not number >= minimum:
            raise self.error(f"{table}.{key} must be at least {minimum:g}, got {value!r}")
        return number

    def count(
        self, table: str, key: str, *, minimum: int, maximum: int, default: int | None = None
    ) -> int:
        """Read a whole number from ``minimum`` to ``maximum``."""
        value = self.table(table).get(key, default)
        if value is None:
            raise self.error(f"missing {table}.{key}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{table}.{key} must be a whole number, got {value!r}")
        if not minimum <= value <= maximum:
            raise self.error(f"{table}.{key} must be from {minimum} to {maximum}, got {value!r}")
        return value

    def network(self, table: str) -> Network:
        # The caps (node, unpack, hash) default to inf, which means no cap.
        return Network(
            connection_bytes_per_s=self.number(table, "connection_bytes_per_s", positive=True),
            node_bytes_per_s=self.number(
                table, "node_bytes_per_s", positive=True, default=math.inf, allow_inf=True
            ),
            first_byte_s=self.number(table, "first_byte_s", minimum=0, default=0.0),
            unpack_bytes_per_s=self.number(
                table, "unpack_bytes_per_s", positive=True, default=math.inf, allow_inf=True
            ),
            hash_bytes_per_s=self.number(
                table, "hash_bytes_per_s", positive=True, default=math.inf, allow_inf=True
            ),
        )

    def layers(self) -> tuple[tuple[int, ...], int | None]:
        """Read ``image.layers``: byte counts, or ``{size, digest, config}`` tables. A digest
        listed twice (a layer shared between image versions) is counted once. Returns the
        sizes and the index among them of the entry marked ``config = true`` (the image config
        blob), or ``None`` when no entry is marked."""
        entries = self.table("image").get("layers")
        if not isinstance(entries, list) or not entries:
            raise self.error("image.layers must be a non-empty list")
        sizes: list[int] = []
        config: int | None = None
        seen: set[str] = set()
        for position, entry in enumerate(entries):
            size, digest, is_config = (
                (entry, None, False)
                if not isinstance(entry, dict)
                else (entry.get("size"), entry.get("digest"), entry.get("config", False))
            )
            if not isinstance(is_config, bool):
                raise self.error(
                    f"image.layers[{position}].config must be true or false, got {is_config!r}"
                )
            if is_config and config is not None:
                raise self.error(
                    f"image.layers[{position}] is a second config blob; mark one entry "
                    "config = true"
                )
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise self.error(f"image.layers[{position}] needs a byte count, got {entry!r}")
            if size > MAX_LAYER_BYTES:
                raise self.error(
                    f"image.layers[{position}] is {size} bytes, above the maximum of "
                    f"{MAX_LAYER_BYTES} (1 TiB); check the number"
                )
            if digest is not None:
                if digest in seen:
                    continue
                seen.add(str(digest))
            if is_config:
                config = len(sizes)
            sizes.append(size)
        return tuple(sizes), config

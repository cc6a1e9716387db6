"""A dictionary with a maximum number of entries that evicts the least recently used one."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["LruDict"]

_K = TypeVar("_K")
_V = TypeVar("_V")


class LruDict(Generic[_K, _V]):
    """A map of at most ``max_entries`` entries.

    ``get`` and assignment mark an entry as used. An assignment that makes the map exceed
    ``max_entries`` evicts the least recently used entry. The mirror keeps what it learns per
    served manifest in these, so the memory of a long-running mirror stays bounded.
    """

    def __init__(self, max_entries: int) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive integer, got {max_entries!r}")
        self.max_entries = max_entries
        self._entries: OrderedDict[_K, _V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __setitem__(self, key: _K, value: _V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, key: _K) -> _V | None:
        """Return the value of ``key`` and mark it as used, or None when it is absent."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def pop(self, key: _K) -> _V | None:
        """Remove ``key``; return its value, or None when it was absent."""
        return self._entries.pop(key, None)

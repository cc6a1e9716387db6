"""Tests for the bounded map in which the mirror keeps what it learns per manifest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmstart.mirror.lru import LruDict

operations = st.lists(
    st.tuples(st.sampled_from(["set", "get", "pop"]), st.integers(0, 9), st.integers()),
    max_size=60,
)


@given(max_entries=st.integers(1, 5), steps=operations)
def test_lru_dict_matches_model(max_entries: int, steps: list[tuple[str, int, int]]) -> None:
    lru: LruDict[int, int] = LruDict(max_entries)
    # The model: keys from least to most recently used, and their values.
    order: list[int] = []
    values: dict[int, int] = {}
    for operation, key, value in steps:
        if operation == "set":
            lru[key] = value
            if key in order:
                order.remove(key)
            order.append(key)
            values[key] = value
            while len(order) > max_entries:
                del values[order.pop(0)]
        elif operation == "get":
            assert lru.get(key) == values.get(key)
            if key in order:
                order.remove(key)
                order.append(key)
        else:
            assert lru.pop(key) == values.pop(key, None)
            if key in order:
                order.remove(key)
        assert len(lru) == len(order) <= max_entries
        for present in order:
            assert present in lru


@pytest.mark.parametrize("max_entries", [0, -1, 1.5, True])
def test_lru_dict_rejects_invalid_size(max_entries: object) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        LruDict(max_entries)  # type: ignore[arg-type]

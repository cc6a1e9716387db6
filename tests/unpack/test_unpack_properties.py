"""Flatten of random layer stacks equals applying the layers in order to a dict model."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unpack.layers import Member, Model, put_image, scan, tar_bytes
from warmstart import LayerStore

DIRECTORIES = ["a", "a/b", "c"]
# Leaves are never parents, so symlinks placed there are never written through.
LEAVES = ["a/f", "a/b/g", "c/h", "top", "a/b/link"]
DIRECTORY_MODES = [0o755, 0o750, 0o700]
FILE_MODES = [0o644, 0o600, 0o755, 0o4755]


def with_parents(path: str, member: Member) -> list[Member]:
    parts = path.split("/")[:-1]
    parents = [
        Member("/".join(parts[: i + 1]), tarfile.DIRTYPE, mode=0o755) for i in range(len(parts))
    ]
    return [*parents, member]


operations = st.one_of(
    st.builds(
        lambda path, data, mode: with_parents(path, Member(path, data=data, mode=mode)),
        st.sampled_from(LEAVES),
        st.binary(max_size=64),
        st.sampled_from(FILE_MODES),
    ),
    st.builds(
        lambda path, target: with_parents(path, Member(path, tarfile.SYMTYPE, link=target)),
        st.sampled_from(LEAVES),
        st.sampled_from(["top", "/etc/passwd", "b/g", "../c/h"]),
    ).filter(
        # A relative "../" target from the top level leaves the root, which unpack rejects
        # (tested on its own); the model covers links that stay inside.
        lambda members: not (members[-1].link.startswith("../") and "/" not in members[-1].name)
    ),
    st.builds(
        lambda path, mode: with_parents(path, Member(path, tarfile.DIRTYPE, mode=mode)),
        st.sampled_from(DIRECTORIES),
        st.sampled_from(DIRECTORY_MODES),
    ),
    st.builds(
        lambda path: with_parents(path, Member(whiteout_name(path))),
        st.sampled_from(DIRECTORIES + LEAVES),
    ),
    st.builds(
        lambda path: with_parents(f"{path}/x", Member(f"{path}/.wh..wh..opq")),
        st.sampled_from(DIRECTORIES),
    ),
)


def whiteout_name(path: str) -> str:
    parent, _, base = path.rpartition("/")
    return f"{parent}/.wh.{base}" if parent else f".wh.{base}"


layer_stacks = st.lists(st.lists(operations, max_size=8), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stack=layer_stacks)
def test_flatten_equals_model(stack: list[list[list[Member]]]) -> None:
    layers = [tar_bytes(member for operation in layer for member in operation) for layer in stack]
    model = Model()
    for layer in layers:
        model.apply(layer)
    with tempfile.TemporaryDirectory() as directory:
        store = LayerStore(Path(directory) / "store")
        put_image(store, "img", layers)
        report = store.unpack("img", Path(directory) / "out", flatten=True)
        assert scan(report.result) == model.entries

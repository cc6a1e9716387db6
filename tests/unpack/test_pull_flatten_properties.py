"""A pull with overlapped flatten gives the same root filesystem as a flatten from the store."""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.registry.fake import FakeRegistry
from tests.registry.layout import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    canonical_json,
    digest_of,
    gzip_bytes,
)
from tests.unpack.layers import Member, scan, tar_bytes
from tests.unpack.test_unpack_properties import LEAVES, operations, with_parents
from warmstart import LayerStore

_tags = itertools.count()

# A file and a hard link to it, written in the same layer.
hardlinks = st.builds(
    lambda path, link, data: [
        *with_parents(path, Member(path, data=data)),
        *with_parents(link, Member(link, tarfile.LNKTYPE, link=path)),
    ],
    st.sampled_from(LEAVES),
    st.sampled_from(LEAVES),
    st.binary(max_size=32),
).filter(lambda members: members[-1].name != members[-1].link)

layer_contents = st.lists(st.one_of(operations, hardlinks), max_size=8)


@st.composite
def layer_stacks(draw: st.DrawFn) -> list[tuple[bytes, bool]]:
    """Layers bottom first, each an uncompressed tar and whether its blob is gzip-compressed.

    Some stacks hold an empty tar, or list one layer blob twice.
    """
    stack = [
        (
            tar_bytes(member for operation in layer for member in operation),
            draw(st.booleans()),
        )
        for layer in draw(st.lists(layer_contents, min_size=1, max_size=4))
    ]
    if draw(st.booleans()):
        stack.insert(draw(st.integers(0, len(stack))), (tar_bytes([]), draw(st.booleans())))
    if draw(st.booleans()):
        stack.insert(draw(st.integers(0, len(stack))), draw(st.sampled_from(stack)))
    return stack


def add_image(registry: FakeRegistry, tag: str, stack: list[tuple[bytes, bool]]) -> str:
    """Serve an image of `stack` (see `layer_stacks`) as `app:tag`; return its digest."""
    descriptors = []
    for layer, compressed in stack:
        blob = gzip_bytes(layer) if compressed else layer
        registry.add_blob("app", blob)
        media_type = OCI_LAYER_GZIP if compressed else OCI_LAYER_TAR
        descriptors.append({"mediaType": media_type, "digest": digest_of(blob), "size": len(blob)})
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer, _ in stack]},
        }
    )
    registry.add_blob("app", config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": descriptors,
    }
    return registry.add_manifest("app", canonical_json(manifest), OCI_MANIFEST, tag=tag)


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """`scan` of `root` with each entry's mtime, and each file's set of hard-linked paths."""
    inodes: dict[int, set[str]] = {}
    times: dict[str, int] = {}
    for directory, directories, files in os.walk(root):
        for name in directories + files:
            path = Path(directory) / name
            key = str(path.relative_to(root))
            info = path.lstat()
            times[key] = info.st_mtime_ns
            if stat.S_ISREG(info.st_mode):
                inodes.setdefault(info.st_ino, set()).add(key)
    links = {key: frozenset(group) for group in inodes.values() for key in group}
    return {
        key: (*entry, times[key], links.get(key, frozenset())) for key, entry in scan(root).items()
    }


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(stack=layer_stacks())
def test_pull_flatten_equals_store_flatten(
    fake_registry: FakeRegistry, stack: list[tuple[bytes, bool]]
) -> None:
    tag = f"t{next(_tags)}"
    digest = add_image(fake_registry, tag, stack)
    with tempfile.TemporaryDirectory() as directory:
        store = LayerStore(Path(directory) / "store")
        pulled = asyncio.run(
            store.pull_and_unpack(
                f"{fake_registry.host}/app:{tag}", Path(directory) / "pulled", flatten=True
            )
        )[1]
        unpacked = store.unpack(digest, Path(directory) / "unpacked", flatten=True)

        assert pulled.layout == "flatten"
        assert [layer.digest for layer in pulled.layers] == [
            layer.digest for layer in unpacked.layers
        ]
        assert [layer.entries for layer in pulled.layers] == [
            layer.entries for layer in unpacked.layers
        ]
        assert tree(pulled.result) == tree(unpacked.result)
        assert not (Path(directory) / "pulled" / ".partial-rootfs").exists()

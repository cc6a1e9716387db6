"""Hypothesis properties of the store: any sequence of operations keeps tagged images whole."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from warmstart import LayerStore, errors

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=3 << 20), offset=st.integers(0, 4 << 20), length=st.integers(0, 64))
def test_read_back_equals_put(tmp_path: Path, data: bytes, offset: int, length: int) -> None:
    store = LayerStore(tmp_path / "store")
    info = store.put(data)
    assert info.digest == sha256(data)
    assert store.read(info.digest) == data
    if offset + length <= len(data):
        assert store.read(info.digest, offset, length) == data[offset : offset + length]
    else:
        try:
            store.read(info.digest, offset, length)
        except errors.InvalidRangeError:
            pass
        else:
            raise AssertionError("a read past the end must raise")


class StoreMachine(RuleBasedStateMachine):
    """Random put, tag, untag, delete and gc; checks reachability after every step."""

    blobs = Bundle("blobs")
    manifests = Bundle("manifests")

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="warmstart-machine-"))
        self.store = LayerStore(self.directory / "store")
        self.content: dict[str, bytes] = {}

    def teardown(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    @rule(target=blobs, data=st.binary(max_size=4096))
    def put_blob(self, data: bytes) -> str:
        digest = self.store.put(data).digest
        self.content[digest] = data
        return digest

    @rule(target=manifests, config=blobs, layers=st.lists(blobs, max_size=4))
    def put_manifest(self, config: str, layers: list[str]) -> str:
        def descriptor(digest: str, media_type: str) -> dict[str, object]:
            return {"mediaType": media_type, "digest": digest, "size": len(self.content[digest])}

        assume(all(self.store.has(d) for d in [config, *layers]))
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor(config, "application/vnd.oci.image.config.v1+json"),
            "layers": [descriptor(d, "application/vnd.oci.image.layer.v1.tar") for d in layers],
        }
        return self.put_blob(json.dumps(manifest).encode())

    @rule(target=manifests, children=st.lists(manifests, min_size=1, max_size=3))
    def put_index(self, children: list[str]) -> str:
        assume(all(self.store.has(d) for d in children))
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {"mediaType": MANIFEST, "digest": d, "size": len(self.content[d])} for d in children
            ],
        }
        return self.put_blob(json.dumps(index).encode())

    @rule(tag=st.sampled_from(["a", "b", "c:1", "d/e"]), manifest=manifests)
    def tag(self, tag: str, manifest: str) -> None:
        if not self.store.has(manifest):
            return
        try:
            self.store.tag(tag, manifest)
        except errors.MissingBlobError:
            # A blob it needs was deleted: the store refuses to tag an incomplete image. An
            # index entry that is absent is not needed (a platform that was not pulled).
            assert any(not self.store.has(d) for d in self.needed([manifest]))

    @rule(tag=st.sampled_from(["a", "b", "c:1", "d/e"]))
    def untag(self, tag: str) -> None:
        self.store.untag(tag)

    @rule(digest=st.one_of(blobs, manifests))
    def delete(self, digest: str) -> None:
        with contextlib.suppress(errors.BlobInUseError):
            self.store.delete(digest)

    @rule()
    def gc(self) -> None:
        report = self.store.gc(grace_period_s=0)
        assert all(blob.digest not in self.reachable() for blob in report.removed_blobs)

    def reachable(self) -> set[str]:
        return self.needed([descriptor.digest for descriptor in self.store.tags()])

    def needed(self, roots: list[str]) -> set[str]:
        """Every digest the images at ``roots`` need: index entries absent from the store are
        skipped with what they refer to, because a tagged index may lack platforms."""
        seen: set[str] = set()
        pending = list(roots)
        while pending:
            digest = pending.pop()
            if digest in seen:
                continue
            seen.add(digest)
            try:
                document = json.loads(self.content[digest])
            except ValueError:
                continue  # layer bytes, not a manifest
            if not isinstance(document, dict):
                continue
            children = [document["config"]] if "config" in document else []
            children += document.get("layers", [])
            entries = document.get("manifests", [])
            children += [entry for entry in entries if self.store.has(entry["digest"])]
            pending += [child["digest"] for child in children]
        return seen

    @invariant()
    def reachable_blobs_are_present_and_verified(self) -> None:
        for digest in self.reachable():
            assert self.store.has(digest), f"{digest} is reachable but missing"
            assert self.store.read(digest) == self.content[digest]
        assert self.store.verify().ok


StoreMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    # Deletes make many manifest rules unusable (assume), and a loaded CI machine is slow.
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
test_store_state_machine = StoreMachine.TestCase

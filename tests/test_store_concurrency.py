"""Several processes writing one store: one download per digest, no global lock."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import REPOSITORY
from tests.store_writer import BLOB_SIZE, blob_chunks, blob_digest
from warmstart import LayerStore

WRITERS = 6


def test_processes_putting_same_blob_store_it_once(tmp_path: Path) -> None:
    root = tmp_path / "store"
    LayerStore(root)
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.store_writer", str(root), "same", "42"],
            cwd=REPOSITORY,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(WRITERS)
    ]
    outcomes = []
    for writer in writers:
        stdout, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr
        outcomes.append(json.loads(stdout))
    assert all(outcome["digest"] == blob_digest(42) for outcome in outcomes)
    assert sum(outcome["created"] for outcome in outcomes) == 1
    store = LayerStore(root)
    assert [blob.digest for blob in store.list()] == [blob_digest(42)]
    assert store.verify().ok


def test_slow_put_does_not_block_put_of_other_blob(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "store")
    release = threading.Event()
    slow_started = threading.Event()

    def slow_chunks():  # type: ignore[no-untyped-def]
        yield b"first half"
        slow_started.set()
        release.wait(timeout=30)
        yield b"second half"

    # A put with a known digest holds that digest's lock for its whole duration.
    slow_digest = "sha256:" + hashlib.sha256(b"first halfsecond half").hexdigest()
    slow = threading.Thread(target=lambda: store.put_stream(slow_chunks(), digest=slow_digest))
    slow.start()
    assert slow_started.wait(timeout=10)
    began = time.perf_counter()
    info = store.put_stream(blob_chunks(3), digest=blob_digest(3), size=BLOB_SIZE)
    elapsed = time.perf_counter() - began
    assert not release.is_set()
    release.set()
    slow.join(timeout=30)
    assert info.created
    assert elapsed < 25, "the second put waited for the first"
    assert len(store.list()) == 2
    assert store.has(slow_digest)

"""A writer killed with SIGKILL at random moments never leaves a wrong or partial blob."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPOSITORY
from tests.store_writer import BLOB_SIZE, blob_chunks, blob_digest
from warmstart import LayerStore

KILLS = 12


def start_writer(root: Path, mode: str, seed: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store_writer", str(root), mode, str(seed)],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_sigkill_at_random_points_leaves_store_valid(tmp_path: Path) -> None:
    root = tmp_path / "store"
    LayerStore(root)
    chooser = random.Random(20261204)
    for kill in range(KILLS):
        writer = start_writer(root, "loop", seed=kill * 1000)
        # Interpreter start-up takes about 0.1 s and one 32 MiB put about as long, so these
        # delays land before, during and between puts.
        time.sleep(chooser.uniform(0.05, 0.6))
        writer.kill()
        writer.wait(timeout=30)
        assert writer.stdout is not None
        writer.stdout.close()

        store = LayerStore(root)
        report = store.verify()
        assert report.ok, f"kill {kill}: {report.problems}"
        for blob in store.list():
            assert blob.size == BLOB_SIZE, f"kill {kill}: visible partial blob {blob}"

    # The put interrupted most recently succeeds afterwards, whatever state its partial is in.
    store = LayerStore(root)
    for seed in (0, (KILLS - 1) * 1000):
        info = store.put_stream(blob_chunks(seed), digest=blob_digest(seed), size=BLOB_SIZE)
        assert info.digest == blob_digest(seed)
    assert store.verify().ok


def test_killed_keyed_put_resumes_or_restarts_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "store"
    LayerStore(root)
    writer = start_writer(root, "same", seed=7)
    time.sleep(0.3)
    writer.kill()
    writer.wait(timeout=30)
    assert writer.stdout is not None
    writer.stdout.close()
    store = LayerStore(root)
    info = store.put_stream(blob_chunks(7), digest=blob_digest(7), size=BLOB_SIZE)
    assert info.digest == blob_digest(7)
    assert store.verify().ok
    assert store.usage().ingest_files == 0

"""Ctrl-C on the command line: one line on stderr, exit status 130, no worker left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

import warmstart.cli
from tests.pull.helpers import pull
from tests.registry.fake import FakeRegistry
from tests.signals import default_sigint
from tests.unpack.layers import Member, tar_bytes
from warmstart import LayerStore
from warmstart.cli import main

# A replay of this many requests runs for several seconds per policy, well past the interrupt.
REQUESTS = 300_000


def _children(pid: int) -> list[int]:
    """Return the process ids of the children of ``pid`` (Linux /proc)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_replay_ctrl_c_stops_workers(tmp_path: Path) -> None:
    trace = tmp_path / "requests.csv"
    rng = np.random.default_rng(1)
    arrivals = np.cumsum(rng.exponential(0.01, REQUESTS))
    tokens = rng.integers(10, 2000, size=(REQUESTS, 2))
    rows = np.column_stack([arrivals, tokens])
    np.savetxt(
        trace,
        rows,
        fmt=["%.4f", "%d", "%d"],
        delimiter=",",
        header="arrival_s,input_tokens,output_tokens",
        comments="",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "warmstart", "replay", str(trace), "--jobs", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # Its own process group, so the signal below reaches the workers too, as Ctrl-C does.
        process_group=0,
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 60
        while len(workers := _children(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(workers) >= 2, "replay started no worker processes within 60 s"
        # Let the workers start their runs.
        time.sleep(1.0)
        interrupted = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        stopped_s = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert process.returncode == 130, stderr
    assert stderr == "warmstart: interrupted\n"
    # The parent stops its workers instead of waiting for their runs, which take 10 s or more.
    assert stopped_s < 5, stopped_s
    for worker in workers:
        assert not Path(f"/proc/{worker}").exists(), f"worker {worker} still runs"


def test_ctrl_c_while_loading_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(argv: object) -> None:
        raise KeyboardInterrupt

    # Loading a command's module (numpy, the engine) takes a noticeable time at start.
    monkeypatch.setattr(warmstart.cli, "build_parser", interrupted)

    status = main(["replay"])

    assert status == 130
    assert capsys.readouterr().err == "warmstart: interrupted\n"


def test_unpack_ctrl_c_stops_at_once(
    store: LayerStore, fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    # Tens of thousands of small files take seconds to write, well past the interrupt.
    members = [Member("d", tarfile.DIRTYPE, mode=0o755)]
    members += [Member(f"d/f{index:05}", data=b"x" * 64) for index in range(40_000)]
    fake_registry.add_image("app", "v1", [tar_bytes(members)])
    reference = f"{fake_registry.host}/app:v1"
    pull(store, reference)
    target = tmp_path / "out"
    command = ["unpack", reference, "--to", str(target), "--store", str(store.root)]
    process = subprocess.Popen(
        [sys.executable, "-m", "warmstart", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(target.glob("layers/.partial-*")) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 130, stderr
    assert stderr == "warmstart: interrupted\n"
    # Ctrl-C ends the command at once, not after the unpack it interrupted has finished.
    assert not (target / "lowerdir").exists()

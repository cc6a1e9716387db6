"""A containerd of the benchmark's own, and ``ctr`` commands against it.

``Containerd.start`` writes a config with root, state and sockets under a work directory (the
CRI plugin off), starts Debian's ``containerd`` as a child process and waits for its socket.
Every timed run gets a fresh daemon with an empty content store, so no run reuses another's
blobs. ``stop`` ends the daemon by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
NAMESPACE = "warmstart-bench"


class Containerd:
    """A running containerd with its root, state and socket under ``work_dir``."""

    def __init__(self, process: subprocess.Popen[bytes], work_dir: Path) -> None:
        self.process = process
        self.work_dir = work_dir
        self.socket = work_dir / "containerd.sock"

    @classmethod
    def start(cls, work_dir: Path) -> Containerd:
        """Start a daemon under ``work_dir``; raises ``RuntimeError`` if no socket appears."""
        program = shutil.which("containerd")
        if program is None:
            raise RuntimeError("containerd not found; install Debian's containerd package")
        work_dir.mkdir(parents=True, exist_ok=True)
        socket = work_dir / "containerd.sock"
        config = work_dir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{work_dir / "root"}"\n'
            f'state = "{work_dir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{socket}"\n'
            f'[ttrpc]\n  address = "{socket}.ttrpc"\n'
        )
        log = (work_dir / "log.txt").open("wb")
        process = subprocess.Popen([program, "--config", str(config)], stdout=log, stderr=log)
        log.close()
        daemon = cls(process, work_dir)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                daemon.stop()
                raise RuntimeError(
                    f"containerd did not start: {(work_dir / 'log.txt').read_text()[-2000:]}"
                )
            time.sleep(0.05)
        return daemon

    def ctr(self, *arguments: str) -> str:
        """Run ``ctr`` against this daemon and return its standard output.

        Raises ``CalledProcessError`` with its output when it fails.
        """
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *arguments],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def plugin_works(self, plugin_type: str, name: str) -> bool:
        """Return whether ``ctr plugins ls`` lists the plugin with status ``ok``."""
        for line in self.ctr("plugins", "ls").splitlines():
            fields = line.split()
            if fields[:2] == [plugin_type, name]:
                return fields[-1] == "ok"
        return False

    def cpu_seconds(self) -> float:
        """Return the daemon's user plus system CPU seconds so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL after 20 s) and remove its directories."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> Containerd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

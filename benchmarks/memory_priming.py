"""Give every timed run the same kind of free memory to write into.

These benchmarks run in a VM whose virtio balloon device has free page reporting on (feature
bit 5 in ``/sys/bus/virtio/devices/*/features``). A few seconds after the guest frees memory,
the host takes the pages back. The next write to them faults them in again on the host.
Measured here with ``dd`` of 2,000 MiB into a new file: 0.37 s when the pages had been freed
just before, 4.4 to 4.9 s when they had been free for 10 s or more. A benchmark that writes
gigabytes (a pull, an unpack) would therefore charge this cost to whichever tool happens to run
after a pause, and spare the one that runs right after another tool deleted its output.

``prime_free_memory`` writes a scratch file of the given size and deletes it, so the free list
holds that much memory the host has just backed; call it right before starting the clock. On a
machine without free page reporting it costs a little time outside the measurement and changes
nothing inside it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

_BLOCK = b"\0" * (1 << 20)


def prime_free_memory(directory: Path, size: int) -> None:
    """Sync, then write and delete ``size`` bytes under ``directory`` to back free memory."""
    subprocess.run(["sync"], check=True)
    scratch = directory / ".memory-priming"
    with scratch.open("wb") as file:
        for _ in range(-(-size // len(_BLOCK))):
            file.write(_BLOCK)
    # Unlinking drops the file's dirty pages without writing them back.
    scratch.unlink()

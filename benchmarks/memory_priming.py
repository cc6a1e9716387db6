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
nothing inside it. Priming protects only what a run writes in its first seconds. The kernel
reports freed memory again after a short delay (2 s in mainline's ``mm/page_reporting.c``), so
in a run of 20 s the primed pages not yet used go back to the host too.

``page_reporting_paused`` is the control for longer runs: it stops the reporting and backs every
free page first, so a run writes into memory as on a machine without reporting (bare metal, or a
VM without a balloon device). Measured here with ``dd`` of 4,000 MiB into tmpfs 5 s after
freeing as much: 2.07 s of system time with reporting on, 1.54 s with it paused after backing.
"""

from __future__ import annotations

import mmap
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
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


# Parameters of the kernel's free page reporting (mm/page_reporting.c), present when a driver
# such as virtio_balloon reports free pages to the host.
PAGE_REPORTING = Path("/sys/module/page_reporting/parameters")
# Memory left untouched by `back_free_memory`, so other processes keep room to run.
_BACKING_MARGIN = 3 << 30
# Memory touched per mapping by `back_free_memory`.
_BACKING_STEP = 1 << 30


def page_reporting_state() -> str:
    """Describe free page reporting on this machine, for a benchmark's header."""
    order = PAGE_REPORTING / "page_reporting_order"
    if not order.exists():
        return "absent"
    value = int(order.read_text())
    if value > _max_page_order():
        return f"paused (page_reporting_order {value})"
    return f"on (free blocks of order {value} and above go back to the host)"


def _max_page_order() -> int:
    # /proc/buddyinfo has one column of free blocks per order, from 0 to the largest.
    fields = Path("/proc/buddyinfo").read_text().splitlines()[0].split()
    return len(fields) - 5


@contextmanager
def page_reporting_paused() -> Iterator[None]:
    """Stop free page reporting while the block runs, and back every free page first.

    Raising ``page_reporting_order`` above the largest order of the buddy allocator stops new
    reports. Touching most of the available memory once then makes the host back the pages it
    had taken. Inside the block, writes cost what they cost on a machine without reporting. The
    previous order is restored on exit. Needs root; kernels that refuse an order above the
    largest one (mainline clamps it) raise ``OSError``.
    """
    order = PAGE_REPORTING / "page_reporting_order"
    if not order.exists():
        yield
        return
    previous = order.read_text().strip()
    try:
        order.write_text(f"{_max_page_order() + 1}\n")
    except OSError as error:
        raise OSError(
            f"cannot pause free page reporting by writing {order}: {error}; "
            "run as root on a kernel that accepts an order above the largest, "
            "or run without --pause-page-reporting"
        ) from error
    try:
        back_free_memory()
        yield
    finally:
        order.write_text(f"{previous}\n")


def back_free_memory() -> None:
    """Touch all available memory but a margin once, so that the host backs each free page."""
    available = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable:")
    )
    page = mmap.PAGESIZE
    regions = []
    try:
        for _ in range(max(0, available - _BACKING_MARGIN) // _BACKING_STEP):
            region = mmap.mmap(-1, _BACKING_STEP)
            for offset in range(0, _BACKING_STEP, page):
                region[offset] = 1
            regions.append(region)
    finally:
        for region in regions:
            region.close()

"""Signal set-up for tests that interrupt a command line process."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """Restore the default SIGINT action in a child process, before it starts the program.

    A shell without job control starts background commands with SIGINT ignored, and children
    inherit that. A terminal's Ctrl-C reaches a process with the default action, so tests
    pass this as ``preexec_fn``.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)

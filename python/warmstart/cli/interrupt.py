"""Blocking native calls that Ctrl-C interrupts at once.

A native call such as ``LayerStore.unpack`` releases the GIL but does not return to Python
until it is done, so the ``KeyboardInterrupt`` of a Ctrl-C would wait for the end of the work.
``interruptible`` runs the call in a daemon thread while the main thread waits in Python.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["abandoned", "interruptible"]

T = TypeVar("T")

_abandoned = threading.Event()


def interruptible(call: Callable[[], T]) -> T:
    """Run ``call`` in a daemon thread and return its result or raise its exception.

    Ctrl-C raises ``KeyboardInterrupt`` here at once and abandons the call: ``console_main``
    then ends the process without waiting for it. That leaves the store and an unpack target
    as a SIGKILL at that moment would, which both are built to survive.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as error:  # re-raised in the calling thread
            failure.append(error)

    thread = threading.Thread(target=run, name="warmstart-native-call", daemon=True)
    thread.start()
    try:
        # Woken every 0.1 s: the signal may land on one of the call's threads, and then nothing
        # interrupts an unbounded wait until the call ends.
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        _abandoned.set()
        raise
    if failure:
        raise failure[0]
    return outcome[0]


def abandoned() -> bool:
    """Return whether a call was abandoned on Ctrl-C and may still be running."""
    return _abandoned.is_set()

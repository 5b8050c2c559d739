"""Clean shutdown on SIGTERM/SIGINT.

Commands that poll :data:`STOP` (a module attribute ``POLLS_STOP = True``) finish what
they are doing and stop; every other command is interrupted at once, as by Ctrl-C.
"""

from __future__ import annotations

import signal
import threading

#: Set by the first SIGTERM or SIGINT.
STOP = threading.Event()


def _request_stop(signum, frame) -> None:
    if STOP.is_set():  # a second signal: give up on a clean stop
        raise KeyboardInterrupt
    STOP.set()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def install(polls_stop: bool = True) -> None:
    """Route SIGTERM and SIGINT to :data:`STOP`, or to KeyboardInterrupt (main thread)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _request_stop if polls_stop else _interrupt)

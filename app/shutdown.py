"""Clean shutdown on SIGTERM/SIGINT: long-running commands poll :data:`STOP`."""

from __future__ import annotations

import signal
import threading

#: Set by the first SIGTERM or SIGINT.
STOP = threading.Event()


def _request_stop(signum, frame) -> None:
    if STOP.is_set():  # a second signal: give up on a clean stop
        raise KeyboardInterrupt
    STOP.set()


def install() -> None:
    """Route SIGTERM and SIGINT to :data:`STOP` (main thread only)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _request_stop)

"""Clean shutdown on SIGTERM/SIGINT.

Commands that poll :data:`STOP` (a module attribute ``POLLS_STOP = True``) finish what
they are doing and stop; every other command is interrupted at once, as by Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import threading
import time

#: Set by the first SIGTERM or SIGINT.
STOP = threading.Event()
#: The supervising session process's pid, set in its children's environment.
PARENT_ENV = "EEGS_SUPERVISOR_PID"
#: A child still alive this long after its session process died is killed.
ORPHAN_KILL_S = 20.0


def _request_stop(signum, frame) -> None:
    if STOP.is_set():  # a second signal: give up on a clean stop
        raise KeyboardInterrupt
    STOP.set()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def install(polls_stop: bool = True) -> None:
    """Route SIGTERM and SIGINT to :data:`STOP`, or to KeyboardInterrupt (main thread).

    A child of a session process (``PARENT_ENV`` set) also stops when that process dies,
    even by SIGKILL: an experiment never goes on unsupervised.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _request_stop if polls_stop else _interrupt)
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit() and int(parent) == os.getppid():
        threading.Thread(
            target=_watch_parent, args=(int(parent),), name="parent-watch", daemon=True
        ).start()


def _watch_parent(parent: int, poll_s: float = 0.5) -> None:
    """Stop this process once its parent is gone (it is re-parented), kill it if it hangs."""
    while os.getppid() == parent:
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGTERM)  # the same clean stop as the supervisor's
    time.sleep(ORPHAN_KILL_S)
    os.kill(os.getpid(), signal.SIGKILL)

"""Process priority: the frame loop and the epoching first, the dashboard last.

A session shares its machine with the generation worker, the brain model and the
experimenter's browser; a frame or an epoch that waits for a core arrives late. On
Linux the niceness is a per-thread attribute that threads inherit when they are
created, so each process sets it first, before it starts any thread.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("eegs.priority")

#: How a lab allows a negative niceness and real-time threads without root (PsychoPy's
#: Linux set-up).
HOW_TO_ALLOW = (
    "add the user to a group, e.g. psychopy, and put '@psychopy - nice -20' and "
    "'@psychopy - rtprio 50' in /etc/security/limits.d/99-psychopylimits.conf (then log in "
    "again)"
)

#: Real-time priorities (SCHED_RR, 1-99): a frame has a deadline every refresh, an epoch
#: a latency budget of tens of ms, so the frame loop preempts the acquisition, and both
#: preempt every ordinary process.
FRAME_LOOP_RT = 2
ACQUISITION_RT = 1

#: Threads that draw the frames of a software-OpenGL display (Mesa llvmpipe: Xvfb, VMs).
SOFTWARE_GL_THREADS = ("llvmpipe",)


def current_niceness() -> int | None:
    """The niceness in effect (the calling thread's, on Linux); None where there is none."""
    return os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None


def set_niceness(niceness: int, role: str) -> int | None:
    """Set this process's niceness (``[priority]`` of the protocol); the one in effect.

    ``None`` where the platform has no niceness. A niceness the user may not take is a
    warning, never an error: the session runs, at the default priority.
    """
    if not hasattr(os, "setpriority"):
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except PermissionError:
        logger.warning(
            "%s: niceness %d is not allowed for this user; it runs at %d. To allow it, %s",
            role,
            niceness,
            current_niceness(),
            HOW_TO_ALLOW,
        )
    return current_niceness()


def rush_threads(pid: int | str, prefixes: tuple[str, ...] | None, priority: int) -> bool:
    """SCHED_RR ``priority`` for the threads of process ``pid`` (named ``prefixes...``; None: all).

    Whether every one took it: False where one was refused, ended meanwhile, or the
    platform has no ``/proc`` or SCHED_RR.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    ok = True
    for tid in tids:
        try:
            if prefixes is not None:
                with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                    if not fh.read().strip().startswith(prefixes):
                        continue
            os.sched_setscheduler(int(tid), os.SCHED_RR, os.sched_param(priority))
        except (OSError, AttributeError):  # a thread that just ended, a refusal, not Linux
            ok = False
    return ok


def rush_process(role: str) -> bool:
    """SCHED_RR for the calling thread and every thread it starts from now on; whether it took.

    Threads inherit their creator's policy, so a process that calls it first, before
    it starts any thread, runs wholly at real-time priority: the acquisition's buffer
    thread (mne-lsl re-arms a timer thread per poll), its cutting loop and its ZeroMQ
    I/O thread, below the frame loop (:data:`ACQUISITION_RT`). Each of them sleeps
    between chunks, so none can hold a core; Linux's real-time throttling keeps 5 % for
    everyone else in any case.
    """
    if not _rush_self(ACQUISITION_RT):
        logger.warning("%s: could not be made real-time. To allow it, %s", role, HOW_TO_ALLOW)
        return False
    return True


def _rush_self(priority: int) -> bool:
    """SCHED_RR ``priority`` for the calling thread; whether it took (not Linux: False)."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except (OSError, AttributeError):  # a refusal, or not Linux
        return False
    return True


def rush_frame_loop(role: str) -> bool:
    """Put the calling thread, the frame loop, at real-time priority; whether it worked.

    PsychoPy's ``core.rush`` (Windows: a high priority class; Linux: SCHED_RR for this
    thread, raised here to :data:`FRAME_LOOP_RT`, above the acquisition's). With
    software OpenGL the frame is drawn by Mesa's llvmpipe threads, which the frame waits
    for: on Linux they get SCHED_RR too. Call it after the window
    exists (they exist then) and before the image loaders start (they stay ordinary).
    Measured under Xvfb with a browser showing the dashboard on 2 cores: dropped frames
    83 -> 381 without it, 59 -> 61 with it.
    """
    from psychopy import core

    ok = bool(core.rush(True))
    if ok and hasattr(os, "sched_setscheduler"):
        ok = _rush_self(FRAME_LOOP_RT)
        ok = rush_threads("self", SOFTWARE_GL_THREADS, FRAME_LOOP_RT) and ok
    if not ok:
        logger.warning(
            "%s: the frame loop could not be made real-time. To allow it, %s", role, HOW_TO_ALLOW
        )
    return ok

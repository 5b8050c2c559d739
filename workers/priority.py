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

#: How a lab allows a negative niceness without root (PsychoPy's Linux set-up).
HOW_TO_ALLOW = (
    "add the user to a group, e.g. psychopy, and put '@psychopy - nice -20' in "
    "/etc/security/limits.d/99-psychopylimits.conf (then log in again)"
)


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
            os.getpriority(os.PRIO_PROCESS, 0),
            HOW_TO_ALLOW,
        )
    return os.getpriority(os.PRIO_PROCESS, 0)

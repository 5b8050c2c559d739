"""Faults a process injects into itself when ``eegs bench faults`` asks (never otherwise).

The bench sets :data:`FAULTS_ENV` to a folder for the session it runs; a file ``NAME`` in
that folder turns fault ``NAME`` on while it exists (``nan``: the brain model sends NaN
samples) or once (``marker_restart``: the presentation closes and reopens its marker
outlet, then deletes the file). Without the variable every check is one dict lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FAULTS_ENV = "EEGS_FAULTS_DIR"
_CHECK_EVERY_S = 0.1
_seen: dict[str, tuple[float, bool]] = {}


def active(name: str) -> bool:
    """Whether fault ``name`` is on (looked up at most every 0.1 s)."""
    folder = os.environ.get(FAULTS_ENV)
    if not folder:
        return False
    now = time.monotonic()
    last = _seen.get(name)
    if last is not None and now - last[0] < _CHECK_EVERY_S:
        return last[1]
    on = (Path(folder) / name).exists()
    _seen[name] = (now, on)
    return on


def take(name: str) -> bool:
    """Whether one-shot fault ``name`` is due; it is used up (its file removed)."""
    if not active(name):
        return False
    try:
        (Path(os.environ[FAULTS_ENV]) / name).unlink()
    except FileNotFoundError:
        return False
    _seen.pop(name, None)
    return True

"""Resuming on another disk: copy a session there, and follow a session that was moved.

A session whose disk filled up stops cleanly, marked failed (docs/architecture.md
section 5). ``eegs resume SESSION --to DIR`` copies it to ``DIR/NAME`` on a disk with
room, checked first, and resumes the copy; the original is left as it is, so nothing is
lost if the copy is cut short (it is made under a hidden name and renamed when whole).

A session directory moved by hand (``mv``, ``rsync``) is followed the same way: the
session's protocol names its own folders (the pilot's ``stimuli/``) by absolute path,
so every such path is rewritten from the place the session was recorded in
(``session.json``'s ``root``) to where it is now; the events, which are never rewritten,
are read with their paths moved likewise (``former_roots``,
:func:`workers.session_store.read_events`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from experiment_protocols import Protocol, load_protocol
from workers.errors import InputError
from workers.session_store import RESERVE_FILE, SessionStore, disk_free_bytes, rebase

#: Room a resumed session needs beyond the copy itself (the rest of its recording).
HEADROOM_BYTES = 256 << 20


def session_bytes(session: Path) -> int:
    """Bytes of every file of a session (links not followed)."""
    total = 0
    for folder, _, files in os.walk(session):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def copy_session(session: Path, to: Path) -> Path:
    """Copy ``session`` to ``to/NAME`` after checking the room there; returns the copy.

    Raises
    ------
    InputError
        ``to`` is not a folder, already holds a session of that name, lies inside the
        session, or has too little free space (the message says how much is needed).
    """
    session, to = Path(session).resolve(), Path(to)
    if to.exists() and not to.is_dir():
        raise InputError(f"--to {to}: not a folder")
    to.mkdir(parents=True, exist_ok=True)
    to = to.resolve()
    dest = to / session.name
    if dest == session or dest.is_relative_to(session):
        raise InputError(f"--to {to}: inside the session itself; name a folder on another disk")
    if dest.exists():
        raise InputError(f"--to {to}: {dest} exists already; name another folder")
    need = session_bytes(session) + HEADROOM_BYTES
    free = disk_free_bytes(to)
    if free is not None and free < need:
        raise InputError(
            f"--to {to}: {free / 2**20:.0f} MiB free; the session needs {need / 2**20:.0f} MiB "
            f"(its {(need - HEADROOM_BYTES) / 2**20:.0f} MiB and {HEADROOM_BYTES >> 20} MiB to "
            "go on recording)"
        )
    partial = to / f".{session.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        shutil.copytree(
            session, partial, symlinks=True, ignore=shutil.ignore_patterns(RESERVE_FILE, ".*.tmp")
        )
        partial.rename(dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return dest


def recorded_root(info: dict[str, Any]) -> Path | None:
    """Where the session was recorded (``root``; older sessions: their protocol file's folder)."""
    root = info.get("root")
    if isinstance(root, str) and root:
        return Path(root)
    pfile = info.get("protocol_file")
    if isinstance(pfile, str) and Path(pfile).is_absolute():
        return Path(pfile).parent
    return None


def moved_protocol(session: Path, protocol_file: str) -> tuple[Protocol, Path] | None:
    """The session's protocol with its own paths moved here, and where it was; None if not moved.

    The caller writes it back (:func:`app.pilot.write_protocol`) and records the new
    ``root`` in ``session.json``.
    """
    here = Path(session).resolve()
    old = recorded_root(SessionStore(here).read_info())
    if old is None or old == here:
        return None
    protocol = load_protocol(here / protocol_file)
    moved = Protocol.model_validate(rebase(protocol.model_dump(mode="json"), str(old), str(here)))
    moved.source = protocol.source
    return moved, old

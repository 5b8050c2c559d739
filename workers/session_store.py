"""The session directory: the one place a session's results live, safe against crashes.

Every write is either an append of one whole line to ``events.jsonl`` (a single
``write`` on an ``O_APPEND`` descriptor, then ``fsync``) or a file written beside its
final name and renamed over it, so a process killed at any moment leaves only
complete lines and complete files behind.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import platform
import socket
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from workers.errors import InputError

logger = logging.getLogger("eegs.session")
SESSION_FILE = "session.json"
EVENTS_FILE = "events.jsonl"
TORN_FILE = "events-torn.txt"
#: The role of the process that runs a whole session (``eegs pilot``, ``run``, ``resume``).
SESSION_ROLE = "session"
RECORDING_FILE = "recording.xdf"
#: Event lines held in memory while the disk is full, at most.
MAX_BACKLOG = 100_000
EPOCHS_DIR = "epochs"

_VERSIONED = ("eegs", "mne", "mne-lsl", "pylsl", "numpy", "pyzmq", "torch", "psychopy")


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON flavour of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite number replaced by None (strict JSON keeps the rest)."""
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass(frozen=True)
class StoredEpoch:
    """One epoch read back from a session directory."""

    trial_id: int
    data: np.ndarray  # (n_channels, n_times), µV
    meta: dict[str, Any]


class SessionStore:
    """Append-only writer (and reader) of one session directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.epochs_dir = self.root / EPOCHS_DIR
        self._events_fd: int | None = None
        self._backlog: list[bytes] = []  # lines a full disk refused, written when it can
        self._torn = False  # a line was cut short: the next write starts a new line
        # one writer at a time: the generation worker logs from its serving, round and
        # calibration-fit threads; two at once wrote one line twice and lost the other
        self._write_lock = threading.Lock()
        self.role: str | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def open(self, *, role: str, protocol: Any = None, **fields: Any) -> SessionStore:
        """Create the directory (or join an existing session) and record who opened it."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.epochs_dir.mkdir(exist_ok=True)
        _set_aside_torn_line(self.root / EVENTS_FILE)
        self._events_fd = os.open(
            self.root / EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        info = self.read_info()
        if not info:
            info = {
                "session": self.root.name,
                "created": _now_iso(),
                "host": socket.gethostname(),
                "platform": platform.platform(),
                "python": sys.version.split()[0],
                "versions": _versions(),
                "status": "running",
            }
        if protocol is not None:
            info["protocol"] = protocol.model_dump(mode="json")
            info["protocol_file"] = protocol.source
            info["protocol_sha256"] = protocol.sha256
        info.update(fields)
        info.setdefault("processes", {})[role] = {"pid": os.getpid(), "started": _now_iso()}
        if role == SESSION_ROLE or "owner" not in info:
            info["owner"] = role  # the process whose end is the session's end
        info["status"] = "running"
        self.role = role
        atomic_write_json(self.root / SESSION_FILE, info)
        self.log("process_start", role=role, pid=os.getpid())
        return self

    def close(self, status: str = "completed", **fields: Any) -> None:
        """Record this process's end state; safe to call twice.

        Only the session's owner (``eegs pilot``/``run``/``resume``, else the process that
        made the directory) sets the session's status: a child that outlives a killed
        session process must not mark the unfinished session "completed".
        """
        if self._events_fd is None:
            return
        info = self.read_info()
        proc = info.setdefault("processes", {}).setdefault(self.role, {})
        proc.update(status=status, ended=_now_iso())
        info.update(fields)
        if info.get("owner", self.role) == self.role:
            info.update(status=status, ended=_now_iso())
        atomic_write_json(self.root / SESSION_FILE, info)
        self.log("process_end", status=status)
        os.close(self._events_fd)
        self._events_fd = None

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("failed" if exc_type else "completed")

    # -- writing -----------------------------------------------------------------------
    def log(self, event: str, **fields: Any) -> None:
        """Append one event line; it is on disk when this returns, or the disk is full.

        A full disk (ENOSPC, EDQUOT) does not stop the process: the lines wait in memory,
        in order, and go out with the next event once there is room (at most
        ``MAX_BACKLOG`` of them). A line the disk cut short is written again whole after
        a newline, so readers skip one fragment and lose no event.
        """
        if self._events_fd is None:
            raise RuntimeError(f"session {self.root} is not open")
        record = {"t_wall": time.time(), "event": event, **fields}
        try:
            text = json.dumps(record, default=_json_default, allow_nan=False)
        except ValueError:  # a NaN or an infinity in a field: the event is kept, as null
            logger.warning("%s: event %r had non-finite numbers, written as null", self.root, event)
            record = {**json_safe(record), "non_finite": True}
            text = json.dumps(record, default=_json_default, allow_nan=False)
        line = (text + "\n").encode()
        with self._write_lock:
            self._append(line)

    def _append(self, line: bytes) -> None:
        """Write the held lines and ``line``, in order (under the write lock)."""
        self._backlog.append(line)
        while self._backlog:
            head = self._backlog[0]
            try:
                n = os.write(self._events_fd, (b"\n" if self._torn else b"") + head)
            except OSError as err:
                if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                n = -1
            if n != len(head) + self._torn:
                self._torn = self._torn or n > 0
                if len(self._backlog) > MAX_BACKLOG:
                    raise OSError(errno.ENOSPC, f"{self.root}: disk full, events held")
                if len(self._backlog) == 1:
                    logger.error("%s: disk full; events are held in memory", self.root)
                return
            self._torn = False
            self._backlog.pop(0)
        os.fsync(self._events_fd)

    def update_info(self, **fields: Any) -> None:
        """Merge fields into ``session.json`` (atomically)."""
        info = self.read_info()
        info.update(fields)
        atomic_write_json(self.root / SESSION_FILE, info)

    def write_epoch(self, trial_id: int, data: np.ndarray, meta: dict[str, Any]) -> Path:
        """Store one preprocessed epoch (µV, float32) with its metadata; never overwrites.

        A trial id seen before (a marker stream that repeats ids) keeps the first epoch
        as ``epoch-NNNNNN.npz`` and stores the next as ``repeated-NNNNNN-K.npz`` beside it,
        which :meth:`epochs` does not read as a trial.
        """
        if isinstance(trial_id, bool) or not isinstance(trial_id, int) or trial_id < 0:
            raise ValueError(f"trial id must be a non-negative integer, not {trial_id!r}")
        path = self.epochs_dir / f"epoch-{trial_id:06d}.npz"
        k = 1
        while path.exists():
            path = self.epochs_dir / f"repeated-{trial_id:06d}-{k}.npz"
            k += 1
        buf = io.BytesIO()
        np.savez(
            buf,
            data=np.asarray(data, dtype=np.float32),
            meta=np.frombuffer(json.dumps(meta, default=_json_default).encode(), np.uint8),
        )
        atomic_write_bytes(path, buf.getvalue())
        return path

    # -- reading -----------------------------------------------------------------------
    def read_info(self) -> dict[str, Any]:
        """``session.json`` as a dict ({} when absent); a corrupt one is an InputError."""
        path = self.root / SESSION_FILE
        if not path.exists():
            return {}
        try:
            info = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise InputError(
                f"{path}: not readable JSON ({err}); events.jsonl and the recordings beside "
                "it are intact: restore session.json from a backup, or rebuild the outputs "
                "from events.jsonl"
            ) from None
        if not isinstance(info, dict):
            raise InputError(f"{path}: expected a JSON object, found {type(info).__name__}")
        return info

    def events(self) -> Iterator[dict[str, Any]]:
        """Every event line; a torn last line (power cut) is skipped."""
        yield from read_events(self.root / EVENTS_FILE)

    def epochs(self) -> list[StoredEpoch]:
        """Every stored epoch, in trial order."""
        out = []
        for path in sorted(self.epochs_dir.glob("epoch-*.npz")):
            try:
                with np.load(path, allow_pickle=False) as npz:
                    meta = json.loads(npz["meta"].tobytes().decode())
                    out.append(StoredEpoch(int(meta["trial_id"]), npz["data"], meta))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                # a truncated file (disk full, power cut): the others still count
                logger.warning("%s is unreadable (%s): left out", path, err)
        return out


def recording_files(root: str | Path) -> list[Path]:
    """The session's XDF recordings in order: ``recording.xdf``, then one per resumption."""
    root = Path(root)
    first = root / RECORDING_FILE
    parts = sorted(
        root.glob("recording-part*.xdf"), key=lambda p: int(p.stem.rsplit("part", 1)[1] or 0)
    )
    return ([first] if first.exists() else []) + parts


def next_recording_file(root: str | Path) -> str:
    """Name for a new recording (``recording-part2.xdf`` etc. after the first).

    An XDF file cannot be appended to, so a resumed session records beside it.
    """
    n = len(recording_files(root))
    return RECORDING_FILE if n == 0 else f"recording-part{n + 1}.xdf"


def _set_aside_torn_line(path: Path) -> None:
    """Move a torn last line (a crash mid-write) to ``events-torn.txt`` before appending.

    Appending onto the fragment would glue the next event to it and make both unreadable;
    the fragment itself is kept, byte for byte, beside the log.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        back = min(size, 1 << 20)
        fh.seek(size - back)
        tail = fh.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n") + 1
        fragment = tail[cut:]
        with (path.parent / TORN_FILE).open("ab") as torn:
            torn.write(fragment + b"\n")
            torn.flush()
            os.fsync(torn.fileno())
        fh.truncate(size - back + cut)
        fh.flush()
        os.fsync(fh.fileno())
    logger.warning("%s: torn last line (%d bytes) moved to %s", path, len(fragment), TORN_FILE)


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Parse an ``events.jsonl`` file line by line.

    A torn final line is skipped; a line that is not a JSON object (a disk fault, a
    hand edit) is skipped with a warning, never a crash: every other event still counts.
    """
    path = Path(path)
    if not path.exists():
        return
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):
                return  # torn final line
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, ValueError):
                record = None
            if not isinstance(record, dict):
                if line.strip():
                    logger.warning("%s line %d is not a JSON object: skipped", path, n)
                continue
            yield record


class EventTail:
    """Reads the event lines appended since the last call (for watchers that poll)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset = 0

    def new(self) -> list[dict[str, Any]]:
        """Complete lines written since the last call; a line still being written waits."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        out = []
        for line in chunk[:end].splitlines():
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, ValueError):
                continue  # a fragment (a full disk cut the line): read_events skips it too
            if isinstance(record, dict):
                out.append(record)
        return out


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

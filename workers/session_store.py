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
import shutil
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

from experiment_protocols.bounded import MAX_DEPTH, InputRejected, parse_json, read_json_file
from workers.errors import InputError, is_disk_full
from workers.messages import trial_id_of

logger = logging.getLogger("eegs.session")
SESSION_FILE = "session.json"
EVENTS_FILE = "events.jsonl"
TORN_FILE = "events-torn.txt"
#: The role of the process that runs a whole session (``eegs pilot``, ``run``, ``resume``).
SESSION_ROLE = "session"
RECORDING_FILE = "recording.xdf"
#: Event lines held in memory while the disk is full, at most.
MAX_BACKLOG = 100_000
#: Space the session's owner sets aside when it opens the session, freed the moment a
#: write finds the disk full: room to close the recording, write the events held and
#: mark the session failed with its reason (docs/architecture.md section 5).
RESERVE_FILE = ".disk-reserve"
RESERVE_BYTES = 4 << 20
#: The roles that set it aside when they own the session: those that record.
RESERVE_ROLES = (SESSION_ROLE, "acquisition")
EPOCHS_DIR = "epochs"
#: Limits of the session files read back (the bounded parser refuses anything larger).
MAX_INFO_BYTES = 16 << 20
MAX_EVENT_LINE_BYTES = 4 << 20
MAX_EPOCH_META_BYTES = 1 << 20
MAX_SIDECAR_BYTES = 1 << 20
#: Our own records wrap an input (a marker) a few levels down: they may nest that much more.
MAX_RECORD_DEPTH = MAX_DEPTH + 8

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
        self._lock = threading.Lock()
        self._torn = False  # a line was cut short: the next write starts a new line
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
        info.pop("failure", None)  # a resumed session runs again
        self.role = role
        atomic_write_json(self.root / SESSION_FILE, info)
        self.log("process_start", role=role, pid=os.getpid())
        if info["owner"] == role and role in RESERVE_ROLES:
            self._make_reserve()
        return self

    def _make_reserve(self) -> None:
        """Set :data:`RESERVE_BYTES` aside (really allocated) for a clean stop on a full disk."""
        path = self.root / RESERVE_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError as err:  # a disk nearly full already, or no fallocate: go on without
            path.unlink(missing_ok=True)
            logger.warning("%s: no disk reserve set aside (%s)", self.root, err)

    def release_reserve(self) -> bool:
        """Free the disk reserve (a write found the disk full); True if there was one."""
        try:
            (self.root / RESERVE_FILE).unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            logger.error("%s: cannot free the disk reserve: %s", self.root, err)
            return False
        logger.error("%s: disk full; the %d MiB reserve is freed to stop cleanly",
                     self.root, RESERVE_BYTES >> 20)  # fmt: skip
        return True

    def write_info(self, info: dict[str, Any]) -> None:
        """``session.json`` written atomically; on a full disk the reserve makes room."""
        try:
            atomic_write_json(self.root / SESSION_FILE, info)
        except OSError as err:
            if not (is_disk_full(err) and self.release_reserve()):
                raise
            atomic_write_json(self.root / SESSION_FILE, info)

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
        try:
            self.write_info(info)
            self.log("process_end", status=status)
        except OSError as err:  # a full disk even after the reserve: the events say the rest
            if not is_disk_full(err):
                raise
            logger.error("%s: session.json not updated (%s): the disk is full", self.root, err)
        finally:
            with self._lock:
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
        dump = {"default": _json_default, "allow_nan": False, "ensure_ascii": False}
        try:
            text = json.dumps(record, **dump)
        except ValueError:  # a NaN or an infinity in a field: the event is kept, as null
            logger.warning("%s: event %r had non-finite numbers, written as null", self.root, event)
            record = {**json_safe(record), "non_finite": True}
            text = json.dumps(record, **dump)
        try:
            line = (text + "\n").encode()
        except UnicodeEncodeError:  # a lone surrogate, which no reader takes: the event is kept
            line = (text + "\n").encode(errors="replace")
        with self._lock:  # a process logs from several threads: one line at a time
            self._write_lines(line)

    def _write_lines(self, line: bytes) -> None:
        """Write ``line`` after the lines held before it (call with the lock held)."""
        if self._events_fd is None:  # closed by another thread meanwhile
            raise RuntimeError(f"session {self.root} is not open")
        self._backlog.append(line)
        while self._backlog:
            head = self._backlog[0]
            try:
                n = os.write(self._events_fd, (b"\n" if self._torn else b"") + head)
            except OSError as err:
                if not is_disk_full(err):
                    raise
                if self.release_reserve():
                    continue  # room now: the lines held go out
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
        self.write_info(info)

    def write_epoch(self, trial_id: int, data: np.ndarray, meta: dict[str, Any]) -> Path:
        """Store one preprocessed epoch (µV, float32) with its metadata; never overwrites.

        A trial id seen before (a marker stream that repeats ids) keeps the first epoch
        as ``epoch-NNNNNN.npz`` and stores the next as ``repeated-NNNNNN-K.npz`` beside it,
        which :meth:`epochs` does not read as a trial.
        """
        if trial_id_of(trial_id) is None:
            raise ValueError(f"trial id must be a non-negative integer (int32), not {trial_id!r}")
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
        self.write_file(path, buf.getvalue())
        return path

    def write_file(self, path: Path, payload: bytes) -> None:
        """A file of the session, written atomically.

        On a full disk the reserve is freed (for the clean stop that follows) and the
        OSError raised: a session does not go on writing onto a full disk.
        """
        try:
            atomic_write_bytes(path, payload)
        except OSError as err:
            if is_disk_full(err):
                self.release_reserve()
            raise

    # -- reading -----------------------------------------------------------------------
    def read_info(self) -> dict[str, Any]:
        """``session.json`` as a dict ({} when absent); a corrupt one is an InputError."""
        path = self.root / SESSION_FILE
        if not path.exists():
            return {}
        try:
            info = read_json_file(
                path, what=SESSION_FILE, max_bytes=MAX_INFO_BYTES, max_depth=MAX_RECORD_DEPTH
            )
        except InputRejected as err:
            raise InputError(
                f"{path}: not readable ({err.reason}); events.jsonl and the recordings beside "
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
        out, here = [], _Here(self.root)
        for path in sorted(self.epochs_dir.glob("epoch-*.npz")):
            try:
                with np.load(path, allow_pickle=False) as npz:
                    meta = parse_json(
                        npz["meta"].tobytes(), what="metadata", max_bytes=MAX_EPOCH_META_BYTES,
                        non_finite="null", max_depth=MAX_RECORD_DEPTH,
                    )  # fmt: skip
                    meta = here(meta)
                    trial_id = trial_id_of(meta.get("trial_id") if isinstance(meta, dict) else None)
                    if trial_id is None:
                        raise ValueError("no valid trial_id in its metadata")
                    out.append(StoredEpoch(trial_id, npz["data"], meta))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                # a truncated file (disk full, power cut): the others still count
                logger.warning("%s is unreadable (%s): left out", path, err)
        return out


def dig(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...`` of a session file read back, None where a level is not an object."""
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def disk_free_bytes(path: str | Path) -> int | None:
    """Free bytes on the disk that holds ``path`` (None if it cannot be told)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """A JSON sidecar of the session (image, provenance) by the bounded parser.

    None, with a warning, for one that is unreadable or not a JSON object: the files
    beside it still count.
    """
    try:
        obj = read_json_file(
            path, what="sidecar", max_bytes=MAX_SIDECAR_BYTES, max_depth=MAX_RECORD_DEPTH
        )
    except InputRejected as err:
        logger.warning("%s", err)
        return None
    if not isinstance(obj, dict):
        logger.warning("sidecar %s: not a JSON object: left out", path)
        return None
    return obj


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
    Paths into the folder where a moved session was (:func:`former_roots`) are read as
    paths into where it is now.
    """
    path = Path(path)
    if not path.exists():
        return
    here = _Here(path.parent)
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):
                return  # torn final line
            record = _event(line)
            if record is None:
                if line.strip():
                    logger.warning("%s line %d is not a JSON object: skipped", path, n)
                continue
            yield here(record)


def former_roots(root: str | Path) -> list[str]:
    """The folders a moved session was recorded in (``session.json``'s ``former_roots``)."""
    try:
        info = SessionStore(root).read_info()
    except InputError:
        return []
    roots = info.get("former_roots")
    return [r for r in roots if isinstance(r, str) and r] if isinstance(roots, list) else []


def rebase(obj: Any, old: str, new: str) -> Any:
    """``obj`` with every string that is the path ``old``, or a path below it, moved to ``new``."""
    if isinstance(obj, dict):
        return {k: rebase(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rebase(v, old, new) for v in obj]
    if isinstance(obj, str) and (obj == old or obj.startswith(old.rstrip(os.sep) + os.sep)):
        return new + obj[len(old.rstrip(os.sep)) :]
    return obj


class _Here:
    """Moves a record's paths from a session's former folders to where it is now."""

    def __init__(self, root: Path) -> None:
        self.former = former_roots(root)
        self.here = str(Path(root).resolve())

    def __call__(self, record: Any) -> Any:
        for old in self.former:
            record = rebase(record, old, self.here)
        return record


def _event(line: bytes) -> dict[str, Any] | None:
    """One line of ``events.jsonl`` by the bounded parser; None for anything but an object."""
    try:
        record = parse_json(
            line,
            what="event",
            max_bytes=MAX_EVENT_LINE_BYTES,
            non_finite="null",
            max_depth=MAX_RECORD_DEPTH,
        )
    except InputRejected:
        return None
    return record if isinstance(record, dict) else None


class EventTail:
    """Reads the event lines appended since the last call (for watchers that poll)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._here = _Here(self.path.parent)

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
            record = _event(line)  # None: a fragment (a full disk cut the line), or garbage
            if record is not None:
                out.append(self._here(record))
        return out


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

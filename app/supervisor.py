"""One parent for every process of a session: start, watch, stop, and report crashes.

Each child is an ``eegs`` subcommand in its own process group, its output in
``SESSION/logs/NAME.log``. A child that exits unexpectedly is logged to
``events.jsonl`` with the tail of its log; one started with ``restarts=N`` (the worker,
the acquisition: both rebuild their state from the session directory) is started again
up to N times within the session (``child_restarted``), any other is raised as
:class:`ProcessCrashed`, so the session is marked and stopped instead of hanging.
Children are stopped in reverse start order (SIGTERM, then SIGKILL after a grace
period), so that the recorder and the acquisition outlive the processes that feed them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.shutdown import PARENT_ENV
from workers.errors import DISK_FULL_STATUS
from workers.session_store import EVENTS_FILE, EventTail, SessionStore, disk_free_bytes

logger = logging.getLogger("eegs.supervisor")

LOG_DIR = "logs"
#: A child's exit status for bad input (a protocol, a stream): starting it again is futile.
INPUT_ERROR_STATUS = 2


class ProcessCrashed(RuntimeError):
    """A supervised process exited while the session still needed it."""

    def __init__(self, name: str, returncode: int, log_tail: str, session: Path) -> None:
        self.name, self.returncode, self.log_tail = name, returncode, log_tail
        self.session = session
        super().__init__(f"process '{name}' exited with status {returncode}:\n{log_tail}")


class DiskFull(ProcessCrashed):
    """A child stopped because the session's disk is full: the session stops, failed.

    Starting it again on the same disk is futile; ``eegs resume SESSION --to DIR``
    continues the session on another disk.
    """

    @property
    def reason(self) -> str:
        """One line for the console and ``session.json``."""
        free = disk_free_bytes(self.session)
        room = "" if free is None else f", {free / 2**20:.1f} MiB free"
        return f"the disk of {self.session} is full ('{self.name}' could not write{room})"

    def record(self) -> dict:
        """``session.json``'s ``failure``."""
        return {"reason": "disk_full", "process": self.name, "detail": self.reason}


@dataclass
class Child:
    """A running child process and where its output goes."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    argv: list[str]
    expected_exit: bool = False
    started: float = field(default_factory=time.monotonic)
    optional: bool = False  # a crash is logged, never ends the session
    max_restarts: int = 0  # restarts allowed within the session (0: a crash ends it)
    restarts: int = 0  # restarts so far
    ready_event: str | None = None  # the event a restarted child logs once it serves

    def log_tail(self, n_bytes: int = 4000) -> str:
        """The end of the child's log."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - n_bytes))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""


class Supervisor:
    """Starts ``eegs`` subcommands as children of this process and stops them all."""

    def __init__(self, store: SessionStore, env: dict[str, str] | None = None) -> None:
        self.store = store
        self.children: dict[str, Child] = {}
        #: called as ``on_restart(name, record)`` once a restarted child is ready again
        self.on_restart: Callable[[str, dict], None] | None = None
        self.ready_timeout_s = 300.0
        # children stop when this process dies, however it dies (app/shutdown.py)
        self.env = {**os.environ, **(env or {}), PARENT_ENV: str(os.getpid())}
        (store.root / LOG_DIR).mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        args: list[str],
        *,
        expected_exit: bool = False,
        optional: bool = False,
        env: dict[str, str] | None = None,
        restarts: int = 0,
        ready_event: str | None = None,
    ) -> Child:
        """Start ``eegs ARGS`` as child ``name``; ``expected_exit`` marks one-shot jobs.

        ``optional``: its crash is logged (``child_crashed``) and the session goes on
        (the dashboard); ``env``: added to this child's environment only.

        ``restarts``: how often a crash of this child is answered by starting it again;
        ``ready_event``: the event it logs once it serves (waited for after a restart).
        """
        log_path = self.store.root / LOG_DIR / f"{name}.log"
        argv = [sys.executable, "-m", "app.cli", *args]
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**self.env, **(env or {})},
            )
        child = Child(name, proc, log_path, argv, expected_exit)
        child.optional = optional
        child.max_restarts, child.ready_event = restarts, ready_event
        self.children[name] = child
        self.store.log("child_started", name=name, pid=proc.pid, argv=args)
        logger.info("started %s (pid %d)", name, proc.pid)
        return child

    def check(self) -> None:
        """Restart a crashed restartable child; raise :class:`ProcessCrashed` for any other."""
        for child in list(self.children.values()):
            code = child.proc.poll()
            if code is None or (child.expected_exit and code == 0):
                continue
            if child.optional:
                self.children.pop(child.name, None)
                self.store.log(
                    "child_crashed",
                    name=child.name,
                    returncode=code,
                    log_tail=child.log_tail(),
                    optional=True,
                )
                logger.warning("optional %s exited (status %s); going on", child.name, code)
                continue
            futile = code in (INPUT_ERROR_STATUS, DISK_FULL_STATUS)  # the same again
            if child.restarts < child.max_restarts and not futile:
                self._restart(child, code)
                continue
            tail = child.log_tail()
            self.store.log("child_crashed", name=child.name, returncode=code, log_tail=tail)
            raise _crashed(child.name, code, tail, self.store.root)

    def _restart(self, child: Child, code: int) -> None:
        """Start a crashed child again and wait until it serves (bounded by its restarts).

        Its process group is stopped first (SIGTERM, so that a recorder it left behind
        closes its file; SIGKILL after 3 s). ``downtime_s`` runs from the moment the
        crash was seen to the child's ready event.
        """
        t0, t0_wall = time.monotonic(), time.time()
        self.store.log(
            "child_crashed",
            name=child.name,
            returncode=code,
            log_tail=child.log_tail(),
            restarting=True,
            attempt=child.restarts + 1,
        )
        _stop_group(child.proc.pid, grace_s=3.0)
        tail = EventTail(self.store.root / EVENTS_FILE)
        tail.new()  # the ready event must be a new one
        new = self.start(
            child.name,
            child.argv[3:],
            expected_exit=child.expected_exit,
            restarts=child.max_restarts,
            ready_event=child.ready_event,
        )
        new.restarts = child.restarts + 1
        deadline = time.monotonic() + self.ready_timeout_s
        while child.ready_event is not None:
            if any(e.get("event") == child.ready_event for e in tail.new()):
                break
            if new.proc.poll() is not None or time.monotonic() > deadline:
                return  # the next check() restarts it again or gives up
            time.sleep(0.1)
        record = {
            "name": child.name,
            "returncode": code,
            "attempt": new.restarts,
            "max_restarts": child.max_restarts,
            "pid": new.proc.pid,
            "t_crash_wall": t0_wall,
            "downtime_s": round(time.monotonic() - t0, 3),
        }
        self.store.log("child_restarted", **record)
        logger.warning("%s crashed (status %s) and was restarted", child.name, code)
        if self.on_restart is not None:
            self.on_restart(child.name, record)

    def wait(self, name: str, timeout: float) -> int:
        """Wait for a one-shot child to finish, watching the others meanwhile."""
        child = self.children[name]
        deadline = time.monotonic() + timeout
        while child.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"'{name}' still running after {timeout:.0f} s")
            self.check()
            time.sleep(0.1)
        code = child.proc.returncode
        self.store.log("child_exited", name=name, returncode=code)
        if code != 0:
            tail = child.log_tail()
            self.store.log("child_crashed", name=name, returncode=code, log_tail=tail)
            raise _crashed(name, code, tail, self.store.root)
        return code

    def stop(self, name: str, grace_s: float = 10.0) -> int | None:
        """Stop one child: SIGTERM to it, SIGKILL to its process group after ``grace_s``.

        Only the child itself gets SIGTERM, so that it can stop its own helpers (the
        LabRecorder process finishing the XDF file) in order.
        """
        child = self.children.pop(name, None)
        if child is None:
            return None
        proc = child.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %.0f s: killing it", name, grace_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        with contextlib.suppress(ProcessLookupError):  # leftovers of the group
            os.killpg(proc.pid, signal.SIGKILL)
        self.store.log("child_stopped", name=name, returncode=proc.returncode)
        return proc.returncode

    def stop_all(self, grace_s: float = 10.0) -> None:
        """Stop every child, newest first."""
        for name in reversed(list(self.children)):
            self.stop(name, grace_s)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


def _crashed(name: str, code: int, tail: str, session: Path) -> ProcessCrashed:
    """The exception for a child's end: :class:`DiskFull` for a full disk's status."""
    kind = DiskFull if code == DISK_FULL_STATUS else ProcessCrashed
    return kind(name, code, tail, session)


def _stop_group(pgid: int, grace_s: float) -> None:
    """SIGTERM a dead child's process group (its helpers), SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)  # ProcessLookupError once the group is empty
            time.sleep(0.1)
        os.killpg(pgid, signal.SIGKILL)

"""Shared fixtures: real processes, real LSL streams, real sockets, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EEGLAB_SET = SHARED / "data" / "real" / "eeglab-sample" / "test_raw.set"


@pytest.fixture
def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stream_name() -> str:
    """A unique LSL stream name, so that tests never see each other's streams."""
    return f"test-{uuid.uuid4().hex[:10]}"


class Processes:
    """Starts ``eegs`` subprocesses and kills each one by pid when the test ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.pids: list[int] = []  # grandchildren the test learnt of: killed by pid

    def adopt(self, pid: int) -> None:
        """Kill ``pid`` too when the test ends (a process started by a started process)."""
        self.pids.append(pid)

    def eegs(self, *args: str, **kwargs) -> subprocess.Popen:
        """Start ``python -m app.cli ARGS`` in its own process group."""
        return self.start([sys.executable, "-m", "app.cli", *args], **kwargs)

    def start(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        """Start any command in its own process group."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)  # it stops its own helpers
                    proc.wait(15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            with contextlib.suppress(ProcessLookupError):  # the group, leftovers included
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(10)


@pytest.fixture
def processes():
    """Start subprocesses; every one is stopped by pid when the test ends."""
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


def run_eegs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``eegs ARGS`` to completion and return its result."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

"""The participant's window: opening it, its clock against LSL's, and headless displays.

``virtual_display`` starts an Xvfb server (no monitor, no vsync) so that the
presentation and its tests run on a machine without a screen; there the frame loop
paces itself (``screen.pace_frames``). Everything that imports PsychoPy does so
inside a function: only the process that opens the window pays for it.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pylsl

from experiment_protocols.presentation import Presentation
from workers.errors import InputError


class DisplayError(InputError):
    """A display that cannot be used as the protocol asks (missing, wrong refresh rate)."""


_SERVERS: list[int] = []  # pids of the Xvfb servers this process runs


def rush_virtual_display() -> bool | None:
    """Put the Xvfb server this process started at the frame loop's real-time priority.

    Under Xvfb a flip ends in the server (the drawn frame is copied to its screen), so
    the frame waits for it: at an ordinary priority a browser on the same cores delays
    the flip. A desktop's display server sets its own priority (GNOME's mutter runs its
    frame clock real-time); this one is ours to set. None when this process runs none.
    """
    from workers.priority import FRAME_LOOP_RT, rush_threads

    if not _SERVERS:
        return None
    return all([rush_threads(pid, None, FRAME_LOOP_RT) for pid in _SERVERS])  # each, then all


@contextlib.contextmanager
def virtual_display(width: int, height: int, timeout_s: float = 10.0) -> Iterator[str]:
    """Run an Xvfb server for the duration of the block; yields its ``DISPLAY``."""
    exe = shutil.which("Xvfb")
    if exe is None:
        raise DisplayError("--headless needs Xvfb (apt-get install xvfb; see setup.sh)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [
            exe,
            "-displayfd",
            str(write_fd),
            "-screen",
            "0",
            f"{width}x{height}x24",
            "-nolisten",
            "tcp",
            "-noreset",
        ],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write_fd)
    old = os.environ.get("DISPLAY")
    _SERVERS.append(proc.pid)
    try:
        number = read_display_number(read_fd, timeout_s)
        if not number.isdigit():
            raise DisplayError(f"Xvfb did not start within {timeout_s} s")
        os.environ["DISPLAY"] = f":{number}"
        yield os.environ["DISPLAY"]
    finally:
        os.close(read_fd)
        _SERVERS.remove(proc.pid)
        if old is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = old
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def read_display_number(fd: int, timeout_s: float) -> str:
    """Read what ``Xvfb -displayfd FD`` writes, up to its newline.

    Xvfb writes the number and the newline separately, and dies if the pipe is closed
    in between.
    """
    deadline = time.monotonic() + timeout_s
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 64) if ready else b""
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def require_display(headless: bool) -> None:
    """Refuse to start on a Linux machine without a display, unless --headless."""
    if headless or not sys.platform.startswith("linux"):
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise DisplayError(
            "no display (DISPLAY is not set): run on the lab display or add --headless"
        )


def open_window(pres: Presentation, *, windowed: bool) -> Any:
    """Open the PsychoPy window the protocol describes, with frame recording off.

    PsychoPy's own frame-interval recorder is off: :mod:`app.presentation.frames`
    records every flip on the LSL clock instead. ``refreshThreshold`` still follows
    the protocol so that PsychoPy's own warnings agree with ours.
    """
    from psychopy import logging as plog
    from psychopy import visual

    plog.console.setLevel(plog.ERROR)
    scr = pres.screen
    kwargs: dict[str, Any] = {
        "size": list(scr.size_px),
        "fullscr": scr.fullscreen and not windowed,
        "screen": scr.index,
        "color": scr.background,
        "colorSpace": "named" if scr.background.isalpha() else "rgb",
        "units": scr.units,
        "allowGUI": windowed,
        "checkTiming": False,
        "waitBlanking": True,
        "winType": "pyglet",
    }
    if scr.monitor:
        kwargs["monitor"] = scr.monitor
    win = visual.Window(**kwargs)
    win.recordFrameIntervals = False
    win.refreshThreshold = 1.0 / scr.refresh_hz + scr.dropped_frame_margin_ms / 1e3
    win.mouseVisible = windowed
    return win


def check_refresh(win: Any, pres: Presentation) -> float:
    """Measure the display's refresh rate; refuse one the protocol does not expect."""
    scr = pres.screen
    measured = win.getActualFrameRate(nIdentical=20, nMaxFrames=240, nWarmUpFrames=20, threshold=1)
    if measured is None or abs(measured - scr.refresh_hz) > scr.refresh_tolerance_hz:
        got = "no stable rate" if measured is None else f"{measured:.2f} Hz"
        raise DisplayError(
            f"the display runs at {got}; the protocol expects screen.refresh_hz = "
            f"{scr.refresh_hz:g} Hz (±{scr.refresh_tolerance_hz:g}). Set the display's mode "
            "(no VRR, no motion smoothing; see hardware.md) or the protocol's refresh_hz"
        )
    return float(measured)


def lsl_offset(samples: int = 50) -> float:
    """``pylsl.local_clock() - PsychoPy's clock``, from the tightest of ``samples`` pairs.

    PsychoPy stamps each flip with its default clock; adding this offset puts the
    flip on the LSL clock that markers and EEG samples use.
    """
    from psychopy import logging as plog

    clock = plog.defaultClock
    best = (float("inf"), 0.0)
    for _ in range(samples):
        t1 = pylsl.local_clock()
        p = clock.getTime()
        t2 = pylsl.local_clock()
        if t2 - t1 < best[0]:
            best = (t2 - t1, (t1 + t2) / 2 - p)
    return best[1]


class FramePacer:
    """Sleeps until the next frame time: a stand-in for vsync on displays without it."""

    def __init__(self, refresh_hz: float) -> None:
        self.period = 1.0 / refresh_hz
        self._t0: float | None = None
        self._k = 0

    def wait(self) -> None:
        """Block until the next frame is due (no-op before the first flip)."""
        if self._t0 is None:
            return
        due = self._t0 + self._k * self.period
        left = due - time.perf_counter()
        if left > 0:
            time.sleep(left)

    def flipped(self) -> None:
        """Count a flip; a late one restarts the frame grid from now."""
        now = time.perf_counter()
        self._k += 1
        if self._t0 is None or now > self._t0 + self._k * self.period:
            self._t0, self._k = now, 1

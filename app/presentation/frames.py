"""Every flip of the session: its time, the CPU our loop spent before it, what it showed.

The flip time is PsychoPy's (taken right after the buffer swap returns), converted
to the LSL clock, so it can be compared with marker timestamps. "Own CPU" is the
main thread's CPU time between one flip returning and the next flip being called:
drawing, key polling, marker scheduling and texture upload, but not the driver's
swap (whose wall time is kept apart as ``flip_ms``). A frame interval over one
refresh plus a margin counts as dropped.
"""

from __future__ import annotations

import io
import json
from array import array
from pathlib import Path

import numpy as np

from workers.session_store import atomic_write_bytes

FRAMES_FILE = "presentation-frames.npz"

PHASES = ("text", "blank", "fixation", "stimulus", "rating", "pause", "flash")


class FrameRecorder:
    """Append-only record of flips; cheap enough to call on every frame.

    Typed arrays (21 bytes a frame) rather than lists of floats (about 140): an hour
    at 60 Hz is 4.5 MB, not 30 MB that the presentation would carry to the end.
    """

    def __init__(self, refresh_hz: float, margin_ms: float) -> None:
        self.period_s = 1.0 / refresh_hz
        self.threshold_s = self.period_s + margin_ms / 1e3
        self.flip_lsl = array("d")
        self.cpu_ms = array("f")
        self.work_ms = array("f")
        self.flip_ms = array("f")
        self.phase = array("B")
        self._codes = {name: i for i, name in enumerate(PHASES)}

    def __len__(self) -> int:
        return len(self.flip_lsl)

    def add(
        self, flip_lsl: float, cpu_ms: float, work_ms: float, phase: str, flip_ms: float = 0.0
    ) -> int:
        """Record one flip; returns its frame index.

        ``work_ms`` is the wall time of our code before the flip, ``flip_ms`` the wall
        time spent inside ``win.flip()`` (buffer swap, waiting for the vertical blank).
        """
        self.flip_lsl.append(flip_lsl)
        self.cpu_ms.append(cpu_ms)
        self.work_ms.append(work_ms)
        self.flip_ms.append(flip_ms)
        self.phase.append(self._codes[phase])
        return len(self.flip_lsl) - 1

    def intervals_ms(self, first: int, last: int) -> np.ndarray:
        """Flip-to-flip intervals of frames ``first..last`` (each to its predecessor)."""
        lo = max(first, 1)
        t = np.frombuffer(self.flip_lsl[lo - 1 : last + 1], np.float64)
        return np.diff(t) * 1e3

    def dropped(self, first: int, last: int) -> int:
        """Frames in ``first..last`` that came later than one refresh plus the margin."""
        return int((self.intervals_ms(first, last) > self.threshold_s * 1e3).sum())

    def summary(self) -> dict:
        """Counts and the distribution of own CPU per frame (ms)."""
        cpu = np.frombuffer(self.cpu_ms, np.float32)[1:]  # the first has no predecessor
        out = {
            "n_frames": len(self),
            "dropped_frames": self.dropped(0, len(self) - 1) if len(self) > 1 else 0,
            "refresh_hz": 1.0 / self.period_s,
        }
        if cpu.size:
            out["own_cpu_ms"] = distribution(cpu)
            out["interval_ms"] = distribution(self.intervals_ms(0, len(self) - 1))
        return out

    def save(self, session_dir: Path) -> Path:
        """Write every frame to ``SESSION/presentation-frames.npz`` (atomically)."""
        buf = io.BytesIO()
        np.savez(
            buf,
            flip_lsl=np.asarray(self.flip_lsl, np.float64),
            cpu_ms=np.asarray(self.cpu_ms, np.float32),
            work_ms=np.asarray(self.work_ms, np.float32),
            flip_ms=np.asarray(self.flip_ms, np.float32),
            phase=np.asarray(self.phase, np.uint8),
            phases=np.frombuffer(json.dumps(PHASES).encode(), np.uint8),
        )
        path = Path(session_dir) / FRAMES_FILE
        atomic_write_bytes(path, buf.getvalue())
        return path


def load_frames(session_dir: Path) -> dict[str, np.ndarray]:
    """Read ``presentation-frames.npz`` back; ``phase_names`` decodes ``phase``."""
    with np.load(Path(session_dir) / FRAMES_FILE, allow_pickle=False) as npz:
        out = {k: npz[k] for k in npz.files}
    out["phase_names"] = json.loads(out.pop("phases").tobytes().decode())
    return out


def distribution(values: np.ndarray) -> dict[str, float]:
    """Median, p95, p99 and max of a sample, rounded to µs."""
    a = np.asarray(values, np.float64)
    if not a.size:
        return {}
    return {
        "median": round(float(np.median(a)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "max": round(float(a.max()), 3),
        "n": int(a.size),
    }

"""JSON markers stamped with the time of the flip that shows what they describe.

Each marker is queued with ``win.callOnFlip``, so it is pushed right after the buffer
swap returns, and it is pushed with an explicit LSL timestamp: PsychoPy's own time of
that flip (taken before any flip callback runs) on the LSL clock. The marker's
timestamp is therefore the flip time even when the push itself is delayed (another
thread holding the GIL, the OS scheduling something else); that delay is measured
and logged per marker as ``push_delay_ms``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pylsl

from workers import faults
from workers.lsl_clock import make_marker_outlet
from workers.messages import dumps_marker


class MarkerStream:
    """The session's marker outlet; markers are queued for the next flip."""

    def __init__(self, win: Any, name: str, log: Callable[..., None], clock_offset: float) -> None:
        self.win = win
        self.name = name
        self.offset = clock_offset
        self.outlet: pylsl.StreamOutlet = make_marker_outlet(name, source_id=f"{name}-presentation")
        self.log = log
        self._queued: list[dict[str, Any]] = []
        self._delays: list[float] = []
        self.push_delays_ms: list[float] = []
        self.n_sent = 0

    def on_next_flip(self, event: str, **fields: Any) -> dict[str, Any]:
        """Push ``{"event": event, **fields}`` (``None`` fields left out) at the next flip."""
        marker = {"event": event, **{k: v for k, v in fields.items() if v is not None}}
        self.win.callOnFlip(self._push, dumps_marker(marker))
        self._queued.append(marker)
        return marker

    def _push(self, text: str) -> None:
        # PsychoPy sets _frameTime to the flip time before it calls the flip callbacks
        # (it is what its own Window.timeOnFlip reports).
        t_flip = self.win._frameTime + self.offset
        if faults.take("marker_restart"):  # eegs bench faults only
            self.restart()
        self.outlet.push_sample([text], t_flip)
        self._delays.append(pylsl.local_clock() - t_flip)

    def restart(self, wait_s: float = 5.0) -> None:
        """Close the outlet and open it again (same name and source id: inlets recover).

        Waits up to ``wait_s`` for a listener so that the next markers are not lost.
        """
        del self.outlet
        self.outlet = make_marker_outlet(self.name, source_id=f"{self.name}-presentation")
        self.outlet.wait_for_consumers(wait_s)
        self.log("marker_outlet_restarted", consumers=bool(self.outlet.have_consumers()))

    def flipped(self, frame: int, flip_lsl: float) -> None:
        """Log the markers that the flip just pushed, with its time and the push delay."""
        for marker, delay in zip(self._queued, self._delays, strict=True):
            self.log(
                "marker_sent",
                frame=frame,
                t_flip_lsl=flip_lsl,
                push_delay_ms=round(delay * 1e3, 4),
                marker=marker,
            )
        self.n_sent += len(self._queued)
        self.push_delays_ms.extend(d * 1e3 for d in self._delays)
        self._queued.clear()
        self._delays.clear()

    def wait_for_consumers(self, timeout: float) -> bool:
        """Wait until a recorder or the acquisition listens, so no marker is lost."""
        return bool(self.outlet.wait_for_consumers(timeout))

"""A real LSL EEG + marker source for tests, paced by the sample clock in a thread."""

from __future__ import annotations

import json
import threading

import numpy as np
import pylsl

from workers.lsl_clock import SampleClock, make_eeg_info, make_marker_outlet, push_chunk_at_clock


class NoiseSource:
    """Streams Gaussian noise (µV) on ``name`` and JSON markers on ``name-markers``."""

    def __init__(
        self,
        name: str,
        ch_names: list[str],
        sfreq: float = 250.0,
        chunk: int = 5,
        amplitude_uv: float = 10.0,
        markers: bool = True,
    ) -> None:
        self.name, self.sfreq, self.chunk = name, sfreq, chunk
        self.ch_names = ch_names
        self.amplitude = amplitude_uv
        self.eeg = pylsl.StreamOutlet(make_eeg_info(name, ch_names, sfreq))
        self.markers = make_marker_outlet(f"{name}-markers") if markers else None
        self.clock = SampleClock(sfreq)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def start(self) -> NoiseSource:
        self._thread.start()
        return self

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.is_set():
            block = rng.normal(0, self.amplitude, (self.chunk, len(self.ch_names)))
            push_chunk_at_clock(self.eeg, self.clock, self.sent, block)
            self.sent += self.chunk

    def marker(self, payload: dict | str, t: float | None = None) -> float:
        """Push a marker (dict -> JSON, str as is) stamped ``t`` (default: now)."""
        t = pylsl.local_clock() if t is None else t
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self.markers.push_sample([text], t)
        return t

    def stop(self) -> None:
        """Stop streaming and destroy the outlets (the stream vanishes from LSL)."""
        self._stop.set()
        self._thread.join(5)
        del self.eeg
        self.markers = None

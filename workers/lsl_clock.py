"""An LSL outlet paced by a sample counter, as an amplifier's app would be.

Sample ``k`` is stamped ``t0 + k / sfreq`` with ``t0`` taken once from the LSL clock,
so timestamps never drift against the sample count, however long the stream runs.
Used by the replay, the brain model and the benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pylsl


def make_eeg_info(
    name: str,
    ch_names: Sequence[str],
    sfreq: float,
    *,
    stype: str = "EEG",
    source_id: str | None = None,
    units: str = "microvolts",
    ch_types: Sequence[str] | None = None,
) -> pylsl.StreamInfo:
    """Stream info with channel labels, types and units in the XDF-standard description."""
    info = pylsl.StreamInfo(
        name, stype, len(ch_names), sfreq, pylsl.cf_float32, source_id or f"{name}-src"
    )
    chans = info.desc().append_child("channels")
    for i, ch in enumerate(ch_names):
        c = chans.append_child("channel")
        c.append_child_value("label", ch)
        c.append_child_value("unit", units)
        c.append_child_value("type", ch_types[i] if ch_types else "EEG")
    return info


def make_marker_outlet(name: str, *, source_id: str | None = None) -> pylsl.StreamOutlet:
    """A JSON string marker outlet (irregular rate)."""
    info = pylsl.StreamInfo(name, "Markers", 1, 0, pylsl.cf_string, source_id or f"{name}-src")
    return pylsl.StreamOutlet(info)


def wait_for_consumers(outlets: Sequence[pylsl.StreamOutlet], timeout: float) -> bool:
    """Wait until every outlet has a consumer, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    for outlet in outlets:
        if not outlet.wait_for_consumers(max(0.0, deadline - time.monotonic())):
            return False
    return True


class SampleClock:
    """Maps a sample index to its LSL timestamp and paces pushes to real time."""

    def __init__(self, sfreq: float, t0: float | None = None, lead_s: float = 0.05) -> None:
        self.sfreq = float(sfreq)
        self.t0 = pylsl.local_clock() + lead_s if t0 is None else float(t0)

    def time_of(self, sample: int | np.ndarray) -> float | np.ndarray:
        """LSL timestamp of a sample index."""
        return self.t0 + np.asarray(sample) / self.sfreq

    def wait_until(self, t: float) -> None:
        """Sleep until the LSL clock reaches ``t`` (sleep then a short spin)."""
        while True:
            left = t - pylsl.local_clock()
            if left <= 0:
                return
            time.sleep(left - 0.0005 if left > 0.001 else 0)


def push_chunk_at_clock(
    outlet: pylsl.StreamOutlet, clock: SampleClock, first_sample: int, chunk: np.ndarray
) -> None:
    """Wait until the chunk's last sample is due, then push it with exact timestamps.

    ``chunk`` is (n_samples, n_channels). Each sample carries its own timestamp so that
    receivers can place it without dejittering.
    """
    n = chunk.shape[0]
    stamps = clock.time_of(np.arange(first_sample, first_sample + n))
    clock.wait_until(float(stamps[-1]))
    outlet.push_chunk(np.ascontiguousarray(chunk, dtype=np.float32), stamps.tolist())

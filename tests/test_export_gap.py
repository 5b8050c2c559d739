"""An EEG gap in a recording: export-bids places every event by the samples' real timestamps."""

from __future__ import annotations

import csv
import threading
import time

import numpy as np
import pytest
from conftest import run_eegs
from lsl_source import NoiseSource

from workers.acquisition import start_recording
from workers.lsl_clock import push_chunk_at_clock
from workers.replay import load_recording

SFREQ = 250.0
GAP_S = 3.0


class PausingSource(NoiseSource):
    """A source that stops sending for ``GAP_S`` (a stalled amplifier: those samples never come)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.paused = threading.Event()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.is_set():
            block = rng.normal(0, self.amplitude, (self.chunk, len(self.ch_names)))
            if self.paused.is_set():  # the clock goes on, the samples are lost
                self.clock.wait_until(float(self.clock.time_of(self.sent + self.chunk - 1)))
            else:
                push_chunk_at_clock(self.eeg, self.clock, self.sent, block)
            self.sent += self.chunk


@pytest.mark.timeout(240)
def test_events_after_a_gap_keep_their_real_time(tmp_path, stream_name):
    source = PausingSource(stream_name, ["Fz", "Cz", "Pz"], SFREQ).start()
    session = tmp_path / "session"
    session.mkdir()
    recorder = None
    try:
        recorder = start_recording(
            session / "recording.xdf", [stream_name, f"{stream_name}-markers"]
        )
        time.sleep(2.0)
        sent = []
        for k in range(8):
            if k == 4:  # the gap, between the 4th and 5th marker
                source.paused.set()
                time.sleep(GAP_S)
                source.paused.clear()
                time.sleep(0.5)
            sent.append(source.marker({"event": "stimulus_onset", "trial": k}))
            time.sleep(0.7)
        time.sleep(1.5)
    finally:
        if recorder is not None:
            recorder.stop()
        source.stop()

    rec = load_recording(session / "recording.xdf")
    import pyxdf

    streams, _ = pyxdf.load_xdf(str(session / "recording.xdf"))
    eeg = next(s for s in streams if s["info"]["type"][0] == "EEG")
    stamps = eeg["time_stamps"]
    gap = float(np.diff(stamps).max())
    assert gap > GAP_S - 0.5  # the recording really has the gap
    assert [m["trial"] for _, m in rec.events] == list(range(8))  # none dropped
    for (sample, _), t in zip(rec.events, sent, strict=True):
        assert abs(stamps[sample] - t) <= 1.0 / SFREQ + 0.002  # the sample recorded at t

    res = run_eegs("export-bids", str(session), str(tmp_path / "bids"), "--subject", "01")
    assert res.returncode == 0, res.stderr[-2000:]
    (tsv,) = (tmp_path / "bids").rglob("*_events.tsv")
    with tsv.open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    rows = [r for r in rows if r["trial_type"] == "stimulus_onset"]
    assert len(rows) == 8
    onsets = np.array([float(r["onset"]) for r in rows])
    # the BIDS data holds the samples back to back: after the gap, onsets move back by it
    expected = np.array([t - stamps[0] - (gap - 1 / SFREQ) * (k >= 4) for k, t in enumerate(sent)])
    np.testing.assert_allclose(onsets, expected, atol=2.0 / SFREQ + 0.003)

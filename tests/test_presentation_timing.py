"""`eegs timing-check`: the photodiode analysis, then the whole check against a live stream."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pylsl
import pytest
from conftest import REPO, run_eegs

from app.presentation.photodiode import light_offsets, offset_report
from workers.lsl_clock import SampleClock, make_eeg_info, push_chunk_at_clock


def _steps(rng, sfreq, markers, lag_s, jitter_s, duration_s=0.1):
    t = np.arange(0, markers[-1] + 1.0, 1 / sfreq)
    v = np.zeros_like(t)
    true = lag_s + rng.normal(0, jitter_s, markers.size)
    for m, d in zip(markers, true, strict=True):
        v[(t >= m + d) & (t < m + d + duration_s)] = 1.0
    return t, v + rng.normal(0, 0.01, t.size), true


def test_light_offsets_recover_lag_and_jitter_from_a_sampled_step():
    rng = np.random.default_rng(0)
    markers = 1.0 + 0.5 * np.arange(200) + rng.uniform(0, 0.01, 200)
    t, v, true = _steps(rng, 1000.0, markers, 0.020, 0.002)
    offsets = light_offsets(t, v, markers, max_lag_s=0.2, search_before_s=0.25)
    assert np.all(np.isfinite(offsets))
    # the edge is placed mid-way between samples: error within half a sample (+ noise)
    assert np.abs(offsets - true).max() <= 0.6e-3
    report = offset_report(offsets, markers.size)
    assert report["offset_ms"]["mean"] == pytest.approx(20.0, abs=0.3)
    assert report["offset_ms"]["sd"] == pytest.approx(2.0, abs=0.3)
    assert report["correction_ms"] == report["offset_ms"]["mean"]
    assert report["n_detected"] == report["n_flashes"] == 200


def test_light_offsets_mark_missed_flashes_and_refuse_a_flat_channel():
    rng = np.random.default_rng(1)
    markers = 1.0 + 0.5 * np.arange(10)
    t, v, _ = _steps(rng, 500.0, markers, 0.3, 0.0)  # later than max_lag
    assert np.isnan(light_offsets(t, v, markers, max_lag_s=0.2, search_before_s=0.2)).all()
    with pytest.raises(ValueError, match="flat"):
        light_offsets(t, np.zeros_like(t), markers, max_lag_s=0.2, search_before_s=0.2)
    with pytest.raises(ValueError, match="saw 0 of 10"):
        offset_report(np.full(10, np.nan), 10)


class PhotodiodeAmplifier:
    """An amplifier stand-in: EEG + a Photodiode channel that lights at marker + lag."""

    def __init__(self, name, markers, lag_s, jitter_s, sfreq=1000.0) -> None:
        self.name, self.markers_name = name, markers
        self.lag_s, self.jitter_s, self.sfreq = lag_s, jitter_s, sfreq
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(7)
        outlet = pylsl.StreamOutlet(make_eeg_info(self.name, ["Cz", "Photodiode"], self.sfreq))
        inlet = None
        clock = SampleClock(self.sfreq)
        lit: list[tuple[float, float]] = []  # (on, off) display times
        chunk, k = 10, 0
        while not self.stop.is_set():
            if inlet is None:
                found = pylsl.resolve_byprop("name", self.markers_name, 1, 0.0)
                if found:
                    inlet = pylsl.StreamInlet(found[0])
                    inlet.open_stream(5)
            if inlet is not None:
                samples, stamps = inlet.pull_chunk(timeout=0.0)
                for s, ts in zip(samples, stamps, strict=True):
                    marker = json.loads(s[0])
                    delay = self.lag_s + rng.normal(0, self.jitter_s)
                    if marker["event"] == "stimulus_onset":
                        lit.append((ts + delay, np.inf))
                    elif marker["event"] == "stimulus_offset" and lit:
                        lit[-1] = (lit[-1][0], ts + delay)
            t = clock.time_of(np.arange(k, k + chunk))
            light = np.zeros(chunk)
            for on, off in lit[-3:]:
                light[(t >= on) & (t < off)] = 1.0
            block = np.column_stack([rng.normal(0, 10, chunk), light]).astype(np.float32)
            push_chunk_at_clock(outlet, clock, k, block)
            k += chunk


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb")
def test_timing_check_recovers_a_20_ms_lag_with_2_ms_jitter(tmp_path, stream_name):
    protocol = tmp_path / "protocol.toml"
    protocol.write_text(
        "[streams]\nconnect_timeout_s = 10.0\n"
        "[presentation.screen]\nsize_px = [320, 240]\n"
        "[presentation.timing_check]\nn_flashes = 40\nflash_s = 0.1\ninterval_s = 0.3\n"
    )
    amp = PhotodiodeAmplifier(stream_name, f"{stream_name}-m", lag_s=0.020, jitter_s=0.002)
    session = tmp_path / "session"
    try:
        result = run_eegs(
            "timing-check",
            "--protocol",
            str(protocol),
            "--session",
            str(session),
            "--eeg",
            stream_name,
            "--markers",
            f"{stream_name}-m",
            "--headless",
            "--json",
            timeout=120,
        )
    finally:
        amp.stop.set()
        amp.thread.join(5)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"offset_ms", "n_flashes", "correction_ms"}
    assert report["n_flashes"] == report["n_detected"] == 40
    assert report["offset_ms"]["mean"] == pytest.approx(20.0, abs=1.0)
    assert report["offset_ms"]["sd"] == pytest.approx(2.0, abs=1.0)
    assert report["correction_ms"] == report["offset_ms"]["mean"]
    info = json.loads((session / "session.json").read_text())
    assert info["timing_check"]["correction_ms"] == report["correction_ms"]
    assert info["status"] == "completed"


@pytest.mark.skipif(
    shutil.which("Xvfb") is None or not (REPO / "workers" / "brain_model.py").exists(),
    reason="needs Xvfb and the brain model",
)
def test_timing_check_against_the_brain_model(tmp_path, stream_name):
    protocol = tmp_path / "protocol.toml"
    protocol.write_text(
        f'[streams]\neeg = "{stream_name}"\nmarkers = "{stream_name}-m"\n'
        "connect_timeout_s = 30.0\n"
        "[presentation.screen]\nsize_px = [320, 240]\n"
        "[presentation.timing_check]\nn_flashes = 40\nflash_s = 0.1\ninterval_s = 0.3\n"
    )
    result = run_eegs(
        "timing-check",
        "--protocol",
        str(protocol),
        "--session",
        str(tmp_path / "s"),
        "--source",
        "brain-model",
        "--lag-ms",
        "20",
        "--jitter-ms",
        "2",
        "--headless",
        "--json",
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n_detected"] == 40
    assert report["offset_ms"]["mean"] == pytest.approx(20.0, abs=1.0)
    assert report["offset_ms"]["sd"] == pytest.approx(2.0, abs=1.0)
    assert Path(tmp_path / "s" / "session.json").exists()


@pytest.mark.timeout(120)
def test_timing_check_refuses_a_display_without_the_protocols_refresh(
    processes, tmp_path, stream_name
):
    """Xvfb has no vsync: a correction measured there would be wrong, so none is written."""
    import os
    import subprocess
    import sys

    xvfb = processes.start(
        ["Xvfb", "-displayfd", "1", "-screen", "0", "640x480x24", "-nolisten", "tcp"],
        stdout=subprocess.PIPE,
    )
    display = ":" + xvfb.stdout.readline().strip()
    amp = PhotodiodeAmplifier(stream_name, f"{stream_name}-m", lag_s=0.020, jitter_s=0.002)
    try:
        res = subprocess.run(
            [sys.executable, "-m", "app.cli", "timing-check", "--session", str(tmp_path / "s"),
             "--eeg", stream_name, "--markers", f"{stream_name}-m", "--windowed"],
            cwd=REPO, capture_output=True, text=True, timeout=100,
            env={**os.environ, "DISPLAY": display},
        )  # fmt: skip
    finally:
        amp.stop.set()
    assert res.returncode == 2, res.stderr[-2000:]
    assert "the display runs at" in res.stderr
    info = json.loads((tmp_path / "s" / "session.json").read_text())
    assert "timing_check" not in info  # no correction written into the session

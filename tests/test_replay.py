"""Replay of the real EEGLAB recording into `eegs acquire`, checked against offline MNE."""

from __future__ import annotations

import os
import signal

import mne
import numpy as np
import pytest
import pyxdf
from conftest import EEGLAB_SET, run_eegs
from helpers import wait_for_event
from scipy.signal import resample_poly

from experiment_protocols import load_protocol
from workers.replay import load_recording
from workers.session_store import SessionStore

pytestmark = pytest.mark.skipif(not EEGLAB_SET.exists(), reason="../shared data not present")

TMIN, TMAX, DURATION = -0.2, 0.8, 20.0


def _offline_epochs() -> tuple[np.ndarray, np.ndarray]:
    """MNE's epochs of the same file with the same causal filters, resampled alike."""
    raw = mne.io.read_raw_eeglab(EEGLAB_SET, preload=True, verbose="error")
    raw.notch_filter(50.0, method="iir", phase="forward", verbose="error")
    raw.filter(
        0.5,
        40.0,
        method="iir",
        phase="forward",
        verbose="error",
        iir_params={"order": 4, "ftype": "butter", "output": "sos"},
    )
    events, ids = mne.events_from_annotations(raw, verbose="error")
    events = events[events[:, 2] == ids["square"]]
    events = events[(events[:, 0] + TMAX * raw.info["sfreq"]) < DURATION * raw.info["sfreq"]]
    ep = mne.Epochs(
        raw, events, tmin=TMIN, tmax=TMAX, baseline=(TMIN, 0), preload=True, verbose="error"
    )
    data = resample_poly(ep.get_data() * 1e6, 250, 128, axis=-1, padtype="line")
    return data, events[:, 0]


def test_replay_into_acquire_matches_offline_mne(processes, tmp_path, stream_name, free_port):
    session = tmp_path / "session"
    acquire = processes.eegs(
        "acquire",
        "--session",
        str(session),
        "--eeg",
        stream_name,
        "--markers",
        f"{stream_name}-markers",
        "--event",
        "square",
        "--tmin",
        str(TMIN),
        "--tmax",
        str(TMAX),
        "--endpoint",
        f"tcp://127.0.0.1:{free_port}",
    )
    replay = processes.eegs(
        "replay",
        str(EEGLAB_SET),
        "--name",
        stream_name,
        "--duration",
        str(DURATION),
        "--wait",
        "60",
    )
    wait_for_event(session, "recording_started", timeout=60, proc=acquire)
    assert replay.wait(DURATION + 60) == 0, replay.stderr.read()
    import time

    time.sleep(1.5)  # the last window closes, then a clean stop (SIGTERM)
    os.kill(acquire.pid, signal.SIGTERM)
    assert acquire.wait(30) == 0, acquire.stderr.read()

    offline, samples = _offline_epochs()
    stored = SessionStore(session).epochs()
    assert len(stored) == len(offline) > 5  # one epoch per 'square' event
    for ep, ref, sample in zip(stored, offline, samples, strict=True):
        assert ep.meta["marker"]["event"] == "square"
        assert ep.meta["marker"]["sample"] == sample
        n = min(ep.data.shape[1], ref.shape[1])
        assert abs(ep.data.shape[1] - ref.shape[1]) <= 1
        a, b = ep.data[:, :n], ref[:, :n]
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99
        lags = range(-3, 4)
        scores = [
            np.corrcoef(np.roll(b, lag, axis=1)[:, 4:-4].ravel(), a[:, 4:-4].ravel())[0, 1]
            for lag in lags
        ]
        assert abs(lags[int(np.argmax(scores))]) <= 1  # at 250 Hz: within one sample

    # the whole session was recorded: EEG and markers round-trip through XDF
    streams, _ = pyxdf.load_xdf(str(session / "recording.xdf"))
    by_name = {s["info"]["name"][0]: s for s in streams}
    assert set(by_name) == {stream_name, f"{stream_name}-markers"}
    eeg = by_name[stream_name]
    assert eeg["time_series"].shape[1] == 32
    assert eeg["time_series"].shape[0] > 0.8 * DURATION * 128
    rec = load_recording(session / "recording.xdf")
    assert rec.sfreq == 128.0
    raw = mne.io.read_raw_eeglab(EEGLAB_SET, preload=True, verbose="error")
    replayed = [a for a in raw.annotations if a["onset"] < DURATION]
    assert [m["event"] for _, m in rec.events] == [a["description"] for a in replayed]
    orig = raw.get_data()[:, :4000].T * 1e6
    sample0, first = rec.events[0][0], rec.events[0][1]["sample"]
    start = first - sample0  # where the XDF begins in the original file
    seg = rec.data[: 4000 - start]
    np.testing.assert_allclose(seg, orig[start : start + len(seg)], atol=1e-3)

    # export to MNE: trial ids as events, marker fields and flags as metadata
    out = tmp_path / "s-epo.fif"
    res = run_eegs("export-epochs", str(session), str(out))
    assert res.returncode == 0, res.stderr
    epochs = mne.read_epochs(out, verbose="error")
    assert len(epochs) == len(stored)
    assert list(epochs.events[:, 2]) == [e.trial_id for e in stored]
    assert set(epochs.metadata["marker_event"]) == {"square"}
    pre = load_protocol().preprocessing  # what the acquisition ran with (0.5-40 Hz)
    assert (epochs.info["highpass"], epochs.info["lowpass"]) == (pre.l_freq, pre.h_freq)
    assert "bad" in epochs.metadata
    np.testing.assert_allclose(epochs.get_data()[0] * 1e6, stored[0].data, rtol=1e-5, atol=1e-4)

    # BIDS-EEG export of the recording, read back with mne-bids
    from mne_bids import BIDSPath, read_raw_bids

    res = run_eegs("export-bids", str(session), str(tmp_path / "bids"), "--subject", "P07")
    assert res.returncode == 0, res.stderr
    bids = read_raw_bids(
        BIDSPath(subject="P07", task="default", root=tmp_path / "bids", datatype="eeg"),
        verbose="error",
    )
    assert bids.info["sfreq"] == 128.0
    assert len(bids.ch_names) == 32
    assert list(bids.annotations.description) == [a["description"] for a in replayed]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/file.set"], "no such file"),
        ([__file__], "unknown format"),
        ([str(EEGLAB_SET), "--start", "9999"], "outside the recording"),
    ],
)
def test_replay_bad_input_exits_2(args, message):
    res = run_eegs("replay", *args, "--name", "never-used")
    assert res.returncode == 2
    assert message in res.stderr

"""Real recordings as inputs: the eeg-notebooks Muse CSV, labelled epochs, MNE Epochs files."""

from __future__ import annotations

import mne
import numpy as np
import pandas as pd
import pytest
from conftest import SHARED

from workers.labelled_epochs import (
    LabelledEpochsError,
    read_epochs_file,
    read_labelled_recording,
)
from workers.muse_csv import MuseCsvError, read_muse_csv
from workers.replay import ReplayError, load_recording

pytestmark = pytest.mark.timeout(120)

N170 = SHARED / "data" / "real" / "eeg-notebooks-n170"
needs_n170 = pytest.mark.skipif(not N170.exists(), reason="../shared data not present")
HEADER = "timestamps,TP9,AF7,AF8,TP10,Right AUX,Marker0"


def _write_run(path, n=600, sfreq=256.0, events=((100, 2), (300, 1)), t0=1000.0, seed=0):
    """A small Muse CSV run: jittered timestamps as muse-lsl writes them, events at rows."""
    rng = np.random.default_rng(seed)
    t = t0 + np.arange(n) / sfreq + rng.normal(0, 0.002, n)
    eeg = rng.normal(0, 10, (n, 5))
    marker = np.zeros(n, dtype=int)
    for row, code in events:
        marker[row] = code
    table = pd.DataFrame(eeg, columns=HEADER.split(",")[1:6])
    table.insert(0, "timestamps", t)
    table["Marker0"] = marker
    table.to_csv(path, index=False)
    return table


def test_a_muse_csv_run_becomes_an_mne_raw(tmp_path):
    table = _write_run(tmp_path / "run.csv")
    raw = read_muse_csv(tmp_path / "run.csv")
    assert raw.ch_names == ["TP9", "AF7", "AF8", "TP10"]  # Right AUX is not EEG
    assert raw.info["sfreq"] == 256.0
    assert set(raw.get_channel_types()) == {"eeg"}
    np.testing.assert_allclose(raw.get_data()[0] * 1e6, table["TP9"].to_numpy())
    assert list(raw.annotations.description) == ["face", "house"]
    np.testing.assert_allclose(raw.annotations.onset, [100 / 256, 300 / 256])
    # a folder: its runs in name order, concatenated with boundaries between them
    _write_run(tmp_path / "run2.csv", events=((50, 1),), seed=1)
    both = read_muse_csv(tmp_path)
    assert both.n_times == 1200
    labels = [d for d in both.annotations.description if d in ("face", "house")]
    assert labels == ["face", "house", "house"]
    assert any("boundary" in d for d in both.annotations.description)
    # the replay reads the same folder: events as markers, boundaries not replayed
    rec = load_recording(tmp_path)
    assert [m["event"] for _, m in rec.events] == ["face", "house", "house"]
    assert [s for s, _ in rec.events] == [100, 300, 650]
    assert rec.ch_names == ["TP9", "AF7", "AF8", "TP10"]
    np.testing.assert_allclose(rec.data[:600, 0], table["TP9"].to_numpy(), rtol=1e-5)


def test_bad_muse_files_are_named_with_what_was_expected(tmp_path):
    (tmp_path / "no_time.csv").write_text("TP9,AF7\n1,2\n3,4\n")
    with pytest.raises(MuseCsvError, match="no 'timestamps' column.*Muse CSV"):
        read_muse_csv(tmp_path / "no_time.csv")
    (tmp_path / "text.csv").write_text(f"{HEADER}\n1,2,3,4,5,6,0\n1.01,2,x,4,5,6,0\n")
    with pytest.raises(MuseCsvError, match=r"text.csv: column 'AF7' .*data row 2: 'x'"):
        read_muse_csv(tmp_path / "text.csv")
    (tmp_path / "flat.csv").write_text(f"{HEADER}\n1,2,3,4,5,6,0\n1,2,3,4,5,6,0\n")
    with pytest.raises(MuseCsvError, match="do not advance"):
        read_muse_csv(tmp_path / "flat.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MuseCsvError, match="no .csv file"):
        read_muse_csv(tmp_path / "empty")
    with pytest.raises(ReplayError, match="unknown format"):
        load_recording(__file__)


@needs_n170
def test_the_shipped_faces_and_houses_as_labelled_epochs():
    part = read_labelled_recording(N170 / "subject2")
    assert (part.dataset, part.participant) == ("eeg-notebooks-n170", "subject2")
    assert part.ch_names == ["TP9", "AF7", "AF8", "TP10"]
    assert part.sfreq == 256.0
    assert part.tmin == pytest.approx(-0.2, abs=1 / 256)
    assert part.data.shape[1:] == (4, 308)  # -0.2 to 1.0 s at 256 Hz
    n_events = part.details["n_events"]
    assert 360 < n_events < 420  # 2 runs of 2 min
    assert len(part) == n_events - part.details["n_dropped"] > 300
    assert set(part.ratings) == {3.0, 7.0}
    assert [r == 7.0 for r in part.ratings] == [lab == "face" for lab in part.labels]
    assert np.ptp(part.data, axis=-1).max() <= 150.0 + 1e-3  # rejected above 150 µV
    # the face-minus-house difference of the N170 data set: at TP9/TP10, 0.2-0.4 s
    t = part.tmin + np.arange(part.data.shape[-1]) / part.sfreq
    win = (t > 0.15) & (t < 0.45)
    face = np.asarray(part.labels) == "face"
    diff = part.data[face][:, [0, 3]][..., win].mean((0, 2)) - part.data[~face][:, [0, 3]][
        ..., win
    ].mean((0, 2))
    assert np.abs(diff).max() > 1.0  # µV
    with pytest.raises(LabelledEpochsError, match=r"no event labelled \['cat'\]"):
        read_labelled_recording(N170 / "subject2", {"cat": 1.0})


def _epochs_file(path, n=30, column="valence", values=None):
    rng = np.random.default_rng(0)
    info = mne.create_info(["Fz", "Cz", "Pz"], 100.0, "eeg")
    data = rng.normal(0, 5e-6, (n, 3, 120))
    meta = pd.DataFrame({column: values if values is not None else rng.integers(1, 10, n)})
    ep = mne.EpochsArray(data, info, tmin=-0.2, metadata=meta, verbose="error")
    ep.save(path, overwrite=True, verbose="error")
    return data


def test_an_epochs_file_with_a_rating_column(tmp_path):
    path = tmp_path / "lab-epo.fif"
    values = np.arange(30, dtype=float) % 9 + 1
    values[4] = np.nan  # an unrated trial is left out
    data = _epochs_file(path, values=values)
    part = read_epochs_file(path, "valence")
    assert len(part) == 29
    assert part.participant == "lab"
    assert part.scale == (1.0, 9.0)
    np.testing.assert_allclose(part.ratings, np.delete(values, 4))
    np.testing.assert_allclose(part.data, np.delete(data, 4, axis=0) * 1e6, rtol=1e-5)
    assert part.details["n_unrated"] == 1
    with pytest.raises(LabelledEpochsError, match=r"no metadata column 'arousal'.*\['valence'\]"):
        read_epochs_file(path, "arousal")
    _epochs_file(tmp_path / "text-epo.fif", values=["high"] * 30)
    with pytest.raises(LabelledEpochsError, match="'valence' is not numeric"):
        read_epochs_file(tmp_path / "text-epo.fif", "valence")
    with pytest.raises(LabelledEpochsError, match="no such file"):
        read_epochs_file(tmp_path / "none-epo.fif", "valence")

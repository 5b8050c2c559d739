"""Muse recordings of NeuroTechX eeg-notebooks (v0.1) as MNE Raw objects.

eeg-notebooks records a Muse headband with muse-lsl into one CSV per run::

    timestamps,TP9,AF7,AF8,TP10,Right AUX,Marker0

``timestamps`` are LSL seconds (the headband sends chunks of 12 samples, so the stamps
jitter and may even step back); the EEG columns are µV; ``Marker0`` is 0 between
events and the event code at the sample of an image onset. As eeg-notebooks' own
loader does, the samples are taken as regularly spaced at the headband's rate (the
rate of the run's timestamps, rounded to the Hz: 256 Hz for the Muse 2016) and each
event sits at its own row. ``Right AUX`` (an auxiliary input, not EEG) is left out.

A directory stands for a participant: every ``*.csv`` below it, in the order of their
names (eeg-notebooks names runs by date and time), concatenated with MNE's boundary
annotations between runs, so filters and epochs never straddle two runs.

The event codes of the faces/houses (N170) experiment are the default names
(:data:`N170_EVENTS`); another code becomes its number as text.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from workers.errors import InputError

#: eeg-notebooks' N170 experiment: 1 = house, 2 = face.
N170_EVENTS: dict[int, str] = {1: "house", 2: "face"}
TIME_COLUMN = "timestamps"
MARKER_PREFIX = "Marker"
_NOT_EEG = ("aux",)  # columns whose lower-case name contains this are not EEG
_EXPECTED = "timestamps,TP9,AF7,AF8,TP10,Right AUX,Marker0 (eeg-notebooks' Muse CSV)"


class MuseCsvError(InputError):
    """A file or folder that is not an eeg-notebooks Muse recording, with the reason."""


def is_muse_csv(path: str | Path) -> bool:
    """Whether ``path`` is a CSV file, or a folder holding some, for :func:`read_muse_csv`."""
    path = Path(path)
    if path.is_dir():
        return any(path.rglob("*.csv"))
    return path.suffix.lower() == ".csv"


def read_muse_csv(path: str | Path, events: Mapping[int, str] = N170_EVENTS):
    """One CSV file (a run) or a folder of them (runs concatenated) as an MNE Raw.

    Parameters
    ----------
    path
        A CSV file, or a folder whose ``*.csv`` files (searched recursively) are runs.
    events
        Event code -> annotation description (default: the N170 experiment's).

    Returns
    -------
    raw : mne.io.RawArray
        EEG channels in volts, events as zero-length annotations at their sample.
    """
    import mne

    path = Path(path)
    if not path.exists():
        raise MuseCsvError(f"{path}: no such file or folder")
    files = sorted(path.rglob("*.csv"), key=lambda p: p.name) if path.is_dir() else [path]
    if not files:
        raise MuseCsvError(f"{path}: no .csv file in this folder (expected {_EXPECTED})")
    raws = [_read_run(f, events) for f in files]
    first = raws[0]
    for f, raw in zip(files[1:], raws[1:], strict=True):
        if raw.ch_names != first.ch_names or raw.info["sfreq"] != first.info["sfreq"]:
            raise MuseCsvError(
                f"{f}: channels {raw.ch_names} at {raw.info['sfreq']:g} Hz differ from "
                f"{files[0].name}'s {first.ch_names} at {first.info['sfreq']:g} Hz"
            )
    if len(raws) == 1:
        return first
    return mne.concatenate_raws(raws, verbose="error")


def _read_run(path: Path, events: Mapping[int, str]):
    import mne
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pandas' ParserError included
        raise MuseCsvError(
            f"{path}: not a readable CSV file ({err}); expected {_EXPECTED}"
        ) from None
    cols = [str(c).strip() for c in table.columns]
    table.columns = cols
    if TIME_COLUMN not in cols:
        raise MuseCsvError(f"{path}: no '{TIME_COLUMN}' column in {cols[:8]}; expected {_EXPECTED}")
    markers = [c for c in cols if c.startswith(MARKER_PREFIX)]
    eeg = [
        c
        for c in cols
        if c != TIME_COLUMN and c not in markers and not any(s in c.lower() for s in _NOT_EEG)
    ]
    if not eeg:
        raise MuseCsvError(f"{path}: no EEG column beside {cols}; expected {_EXPECTED}")
    if len(table) < 2:
        raise MuseCsvError(f"{path}: {len(table)} sample(s); a run needs at least two")
    numeric = table[[TIME_COLUMN, *eeg, *markers]].apply(pd.to_numeric, errors="coerce")
    bad = numeric.columns[numeric.isna().any()].tolist()
    if bad:
        row = int(numeric[bad[0]].isna().to_numpy().argmax())
        raise MuseCsvError(
            f"{path}: column '{bad[0]}' has a value that is not a number "
            f"(data row {row + 1}: {table[bad[0]].iloc[row]!r})"
        )
    stamps = numeric[TIME_COLUMN].to_numpy(np.float64)
    span = stamps[-1] - stamps[0]
    if not span > 0:
        raise MuseCsvError(f"{path}: the timestamps do not advance ({stamps[0]} to {stamps[-1]})")
    sfreq = float(round((len(stamps) - 1) / span))
    if sfreq <= 0:
        raise MuseCsvError(f"{path}: {len(stamps)} samples over {span:g} s is no sampling rate")
    data = numeric[eeg].to_numpy(np.float64).T * 1e-6  # µV -> V
    raw = mne.io.RawArray(data, mne.create_info(eeg, sfreq, "eeg"), verbose="error")
    onsets, names = [], []
    for col in markers:
        codes = numeric[col].to_numpy()
        for i in np.flatnonzero(codes != 0):
            code = int(codes[i]) if float(codes[i]).is_integer() else codes[i]
            onsets.append(i / sfreq)
            names.append(events.get(code, str(code)))
    if onsets:
        order = np.argsort(onsets, kind="stable")
        raw.set_annotations(
            mne.Annotations(np.asarray(onsets)[order], 0.0, np.asarray(names)[order])
        )
    return raw

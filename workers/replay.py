"""Replay a recording as live LSL streams: EEG plus JSON markers from its events.

Readers by file: ``.xdf`` (an EEGS session's recording), whatever MNE reads (FIF, EDF,
BDF, BrainVision, EEGLAB...) and the eeg-notebooks Muse CSV, a file or a folder of runs
(:mod:`workers.muse_csv`).

mne-lsl's ``PlayerLSL`` streams annotations as a numeric one-hot stream and stamps
chunks when they are pushed; EEGS needs JSON string markers stamped on the same
sample clock as the EEG (so that an epoch lands on the same sample as offline), so
the replay paces its own outlets with :class:`workers.lsl_clock.SampleClock`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pylsl

from workers.errors import InputError
from workers.lsl_clock import (
    SampleClock,
    make_eeg_info,
    make_marker_outlet,
    push_chunk_at_clock,
    wait_for_consumers,
)
from workers.messages import RATING_EVENT, MessageError, parse_marker
from workers.muse_csv import is_muse_csv, read_muse_csv

logger = logging.getLogger("eegs.replay")

_MNE_EXTENSIONS = (".fif", ".fif.gz", ".edf", ".bdf", ".vhdr", ".set", ".gdf", ".cnt")


class ReplayError(InputError):
    """A file that cannot be replayed, with the reason."""


@dataclass
class Recording:
    """Samples (µV, time × channels) and events (sample index, JSON marker dict)."""

    data: np.ndarray
    sfreq: float
    ch_names: list[str]
    events: list[tuple[int, dict]]

    def to_raw(self):
        """An :class:`mne.io.RawArray` in volts, events as annotations (marker's "event")."""
        import mne

        types = ["misc" if ch.lower() == "photodiode" else "eeg" for ch in self.ch_names]
        raw = mne.io.RawArray(
            self.data.T.astype(np.float64) * 1e-6,
            mne.create_info(self.ch_names, self.sfreq, types),
            verbose="error",
        )
        if self.events:
            raw.set_annotations(
                mne.Annotations(
                    [s / self.sfreq for s, _ in self.events],
                    0.0,
                    [m["event"] for _, m in self.events],
                )
            )
        return raw


@dataclass
class ReplayConfig:
    """What one ``eegs replay`` process streams.

    With ``label_ratings`` each event whose label it names becomes a trial of a rated
    block, as the presentation would send it: a stimulus marker (``event``, the label
    in ``label``, ``block``) and a ``rating`` marker of that trial whose valence is the
    label's rating on ``scale``. A labelled recording so drives a session's calibration
    (the personal estimator fitted on the labels as ratings).
    """

    path: Path
    name: str = "EEGS-EEG"
    start_s: float = 0.0
    duration_s: float | None = None
    chunk_s: float = 0.02
    wait_s: float = 0.0
    lead_s: float = 1.0
    label_ratings: dict[str, float] | None = None
    block: str = "calibration"
    event: str = "stimulus_onset"
    scale: tuple[float, float] = (1.0, 9.0)


def rated_trials(events: list[tuple[int, dict]], config: ReplayConfig) -> list[tuple[int, dict]]:
    """``events`` with each labelled one as a stimulus marker and its rating marker."""
    if not config.label_ratings:
        return events
    lo, hi = config.scale
    out = []
    for s, m in events:
        label = m.get("event")
        if label not in config.label_ratings:
            out.append((s, m))
            continue
        trial = m["trial"]
        out.append((s, {**m, "event": config.event, "label": label, "block": config.block}))
        rating = {"event": RATING_EVENT, "trial": trial, "block": config.block,
                  "valence": config.label_ratings[label], "low": lo, "high": hi}  # fmt: skip
        out.append((s, rating))
    return out


def load_recording(path: str | Path) -> Recording:
    """Read an XDF file of ours, any file MNE reads or a Muse CSV, as µV and events."""
    path = Path(path)
    if not path.exists():
        raise ReplayError(f"{path}: no such file")
    if path.suffix.lower() == ".xdf":
        return _load_xdf(path)
    if is_muse_csv(path):
        return _from_raw(read_muse_csv(path))
    if path.is_dir():
        raise ReplayError(f"{path}: a folder without any .csv run (eeg-notebooks' Muse CSV)")
    if not path.name.lower().endswith(_MNE_EXTENSIONS):
        raise ReplayError(
            f"{path}: unknown format; expected .xdf, .csv (eeg-notebooks' Muse) or one of "
            f"{_MNE_EXTENSIONS}"
        )
    return _load_mne(path)


def _load_mne(path: Path) -> Recording:
    import mne

    try:
        raw = mne.io.read_raw(path, preload=True, verbose="error")
    except Exception as err:  # MNE raises many types for unreadable files
        raise ReplayError(f"{path}: MNE cannot read it: {err}") from None
    return _from_raw(raw)


def _from_raw(raw) -> Recording:
    """An MNE Raw as a recording: stim channels and run boundaries are not replayed."""
    import mne

    stim = [
        ch for ch, kind in zip(raw.ch_names, raw.get_channel_types(), strict=True) if kind == "stim"
    ]
    raw.drop_channels(stim)  # events travel as markers
    scale = np.array(
        [1e6 if ch["unit"] == mne.io.constants.FIFF.FIFF_UNIT_V else 1.0 for ch in raw.info["chs"]]
    )
    keep = [
        i
        for i, d in enumerate(raw.annotations.description)
        if not d.upper().startswith(("BAD BOUNDARY", "EDGE BOUNDARY"))
    ]
    raw.set_annotations(raw.annotations[keep])
    events, event_id = mne.events_from_annotations(raw, verbose="error")
    names = {v: k for k, v in event_id.items()}
    out = [(int(s - raw.first_samp), {"event": names[code]}) for s, _, code in events]
    return Recording(
        (raw.get_data().T * scale).astype(np.float32), raw.info["sfreq"], raw.ch_names, out
    )


class _PyxdfErrors(logging.Handler):
    """Collects what pyxdf logs about a damaged file, to report it as one line."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _load_xdf(path: Path) -> Recording:
    import pyxdf

    problems = _PyxdfErrors()
    log = logging.getLogger("pyxdf")
    log.addHandler(problems)
    propagate, log.propagate = log.propagate, False  # its tracebacks become one reason
    try:
        streams, _ = pyxdf.load_xdf(str(path))
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways inside pyxdf
        raise ReplayError(f"{path}: not a readable XDF file: {type(err).__name__}: {err}") from None
    finally:
        log.removeHandler(problems)
        log.propagate = propagate
    if problems.messages and not any(len(s["time_stamps"]) for s in streams):
        raise ReplayError(f"{path}: not a readable XDF file: {'; '.join(problems.messages[:3])}")
    eeg = [s for s in streams if float(s["info"]["nominal_srate"][0]) > 0 and len(s["time_stamps"])]
    markers = [s for s in streams if s["info"]["channel_format"][0] == "string"]
    if not eeg:
        raise ReplayError(f"{path}: no regularly sampled stream with data")
    pref = [s for s in eeg if s["info"]["type"][0].upper() == "EEG"]
    s = (pref or eeg)[0]
    sfreq = float(s["info"]["nominal_srate"][0])
    n_ch = int(s["info"]["channel_count"][0])
    try:
        chans = s["info"]["desc"][0]["channels"][0]["channel"]
        ch_names = [c["label"][0] for c in chans]
    except (KeyError, IndexError, TypeError):
        ch_names = [f"EEG{i:03d}" for i in range(n_ch)]
    stamps = np.asarray(s["time_stamps"], dtype=np.float64)
    out: list[tuple[int, dict]] = []
    for m in markers:
        for text, t in zip(m["time_series"], m["time_stamps"], strict=True):
            try:  # the one bounded parser (a recorded marker is input like a live one)
                marker = parse_marker(text[0])
            except MessageError:
                marker = {"event": str(text[0]).encode(errors="replace").decode()}
            out.append((sample_at(stamps, float(t), sfreq), marker))
    out.sort(key=lambda e: e[0])
    return Recording(np.asarray(s["time_series"], dtype=np.float32), sfreq, ch_names, out)


def sample_at(stamps: np.ndarray, t: float, sfreq: float) -> int:
    """Index of the sample recorded nearest to LSL time ``t`` (by its real timestamp).

    The samples of a recording with a gap (a stalled amplifier) are stored back to
    back, so counting ``(t - t0) * sfreq`` would place every later event late by the
    gap. A time before the first or after the last sample stays outside the data.
    """
    if t < stamps[0]:
        return int(round((t - stamps[0]) * sfreq))
    if t > stamps[-1]:
        return stamps.size - 1 + int(round((t - stamps[-1]) * sfreq))
    i = int(np.searchsorted(stamps, t))
    return i - 1 if i > 0 and t - stamps[i - 1] <= stamps[i] - t else i


def run(config: ReplayConfig, stop=lambda: False) -> int:
    """Stream the file once; returns the number of markers sent."""
    rec = load_recording(config.path)
    s0 = int(round(config.start_s * rec.sfreq))
    n_total = rec.data.shape[0]
    if not 0 <= s0 < n_total:
        raise ReplayError(
            f"--start {config.start_s} s is outside the recording "
            f"(0 to {n_total / rec.sfreq:.1f} s)"
        )
    s1 = (
        n_total
        if config.duration_s is None
        else min(n_total, s0 + int(round(config.duration_s * rec.sfreq)))
    )
    events = [(s - s0, m) for s, m in rec.events if s0 <= s < s1]
    for k, (s, m) in enumerate(events):
        m.setdefault("trial", k)
        m.setdefault("sample", s + s0)
    events = rated_trials(events, config)
    data = rec.data[s0:s1]
    eeg_out = pylsl.StreamOutlet(make_eeg_info(config.name, rec.ch_names, rec.sfreq))
    mrk_out = make_marker_outlet(f"{config.name}-markers")
    if config.wait_s > 0 and not wait_for_consumers([eeg_out, mrk_out], config.wait_s):
        logger.warning("no consumer after %.1f s; replaying anyway", config.wait_s)
    chunk = max(1, int(round(config.chunk_s * rec.sfreq)))
    clock = SampleClock(rec.sfreq, lead_s=config.lead_s)
    logger.info(
        "replaying %s: %d channels at %g Hz, %.1f s, %d events",
        config.path.name,
        len(rec.ch_names),
        rec.sfreq,
        data.shape[0] / rec.sfreq,
        len(events),
    )
    k_ev = 0
    sent = 0
    for first in range(0, data.shape[0], chunk):
        if stop():
            break
        block = data[first : first + chunk]
        push_chunk_at_clock(eeg_out, clock, first, block)
        while k_ev < len(events) and events[k_ev][0] < first + block.shape[0]:
            s, m = events[k_ev]
            mrk_out.push_sample([json.dumps(m)], float(clock.time_of(s)))
            k_ev += 1
            sent += 1
    return sent

"""Write a session's epochs as an MNE Epochs file (-epo.fif).

Event codes are the trial ids; metadata holds every marker field, the marker's LSL
time and the quality flags, so that bad epochs can be selected in MNE
(``epochs[epochs.metadata.bad]``) rather than having been dropped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export-epochs"
HELP = "write a session's epochs as MNE Epochs (-epo.fif)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("session", type=Path, metavar="SESSION", help="session directory")
    p.add_argument("out", type=Path, metavar="OUT-epo.fif", help="output file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")


def _filter_band(session: Path, sfreq: float) -> tuple[float, float] | None:
    """(highpass, lowpass) of the preprocessing the session ran (``session.json``)."""
    from workers.session_store import SessionStore, dig

    pre = dig(SessionStore(session).read_info(), "protocol", "preprocessing")
    low, high = dig(pre, "l_freq"), dig(pre, "h_freq")
    if not isinstance(pre, dict) or not all(
        v is None or isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)
    ):
        return None
    nyquist = sfreq / 2
    return (float(low or 0.0), float(min(high or nyquist, nyquist)))


def session_epochs(session: Path):
    """A session's stored epochs as :class:`mne.EpochsArray` (volts)."""
    import mne
    import numpy as np
    import pandas as pd

    from workers.errors import InputError
    from workers.session_store import SessionStore

    stored = SessionStore(session).epochs()
    if not stored:
        raise InputError(f"{session}: no epochs under {session / 'epochs'}")
    first = stored[0].meta
    info = mne.create_info(first["ch_names"], first["sfreq"], "eeg")
    band = _filter_band(session, float(first["sfreq"]))
    if band is not None:  # the band eegs acquire filtered with, not MNE's 0 Hz to Nyquist
        # MNE has no public setter for data filtered before it saw them; mne-lsl does this
        with info._unlock():
            info["highpass"], info["lowpass"] = band
    data = np.stack([e.data for e in stored]).astype(np.float64) * 1e-6
    ids = np.array([e.trial_id for e in stored])
    sfreq = first["sfreq"]
    onsets = np.array([round(e.meta["t_marker_lsl"] * sfreq) for e in stored])
    events = np.column_stack([onsets - onsets.min(), np.zeros_like(ids), ids])
    rows = []
    for e in stored:
        row = {
            f"marker_{k}": v for k, v in e.meta["marker"].items() if not isinstance(v, dict | list)
        }
        row.update(
            trial_id=e.trial_id,
            t_marker_lsl=e.meta["t_marker_lsl"],
            bad=bool(e.meta["quality"]["flags"]),
            flags=",".join(e.meta["quality"]["flags"]),
            max_ptp_uv=e.meta["quality"]["max_ptp_uv"],
        )
        rows.append(row)
    return mne.EpochsArray(
        data,
        info,
        events=events,
        tmin=first["tmin"],
        event_id={f"trial/{i}": int(i) for i in ids},
        metadata=pd.DataFrame(rows),
        verbose="error",
    )


def run(args: argparse.Namespace) -> int:
    """Export and report what was written."""
    from workers.errors import InputError

    if args.out.exists() and not args.overwrite:
        raise InputError(f"{args.out} exists; --overwrite replaces it")
    if args.out.is_dir():
        raise InputError(f"{args.out} is a folder; name the -epo.fif file to write")
    epochs = session_epochs(args.session)
    epochs.save(args.out, overwrite=args.overwrite, verbose="error")
    print(f"{len(epochs)} epochs ({int(epochs.metadata.bad.sum())} flagged bad) -> {args.out}")
    return 0

"""Write a session's recording as BIDS-EEG (mne-bids), markers as events.

The EEG and marker streams of SESSION/recording.xdf become one BrainVision recording
in a BIDS tree under OUT, with every marker's "event" in events.tsv (trial_type) and
its fields as columns: trial, block, round, label, image, scale (of a rating_onset
marker: the question shown), valence and arousal (of a rating marker: the
participant's answers; n/a where a marker has none). A resumed session
has one recording part per run of its processes (recording-part2.xdf, ...): each
becomes its own BIDS run. Subject, session and task come from session.json unless given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export-bids"
HELP = "write a session's recording as BIDS-EEG"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("session", type=Path, metavar="SESSION", help="session directory")
    p.add_argument("out", type=Path, metavar="OUT", help="BIDS root (created if needed)")
    p.add_argument("--subject", help="BIDS subject label (default: session.json subject)")
    p.add_argument("--task", help="BIDS task label (default: the protocol's name)")
    p.add_argument("--bids-session", dest="bids_session", help="BIDS session label")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")


def _label(text: str) -> str:
    """BIDS labels are alphanumeric."""
    return "".join(c for c in text if c.isalnum()) or "x"


#: Marker fields written as events.tsv columns, with their descriptions (events.json).
EVENT_COLUMNS = {
    "trial": "Trial id (the same in the session's events.jsonl and epochs).",
    "block": "Block of the trial (calibration, closed_loop, validation or its name).",
    "round": "Round of the block (closed loop: generation).",
    "label": "Class label of the image's folder (labelled blocks).",
    "image": "Path of the image shown, as the presentation read it.",
    "scale": "rating_onset: the rating question shown (valence or arousal).",
    "valence": "rating: the participant's valence rating (low = unpleasant).",
    "arousal": "rating: the participant's arousal rating (low = calm).",
    "low": "rating_onset, rating: lowest point of the rating scale.",
    "high": "rating_onset, rating: highest point of the rating scale.",
}


def event_extras(markers: list[dict]) -> list[dict]:
    """Per marker, the fields of :data:`EVENT_COLUMNS` it has (scalars only)."""
    out = []
    for m in markers:
        extra = {}
        for key in EVENT_COLUMNS:
            value = m.get(key)
            if isinstance(value, float) and value != value:  # NaN
                value = None
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                extra[key] = value
        out.append(extra)
    return out


def _annotate(raw, rec) -> list[str]:
    """Markers as annotations whose extras become events.tsv columns; the columns used."""
    import mne

    if not rec.events:
        return []
    extras = event_extras([m for _, m in rec.events])
    used = [key for key in EVENT_COLUMNS if any(key in e for e in extras)]
    raw.set_annotations(
        mne.Annotations(
            [s / rec.sfreq for s, _ in rec.events],
            0.0,
            [str(m["event"]) for _, m in rec.events],
            extras=[{key: e.get(key) for key in used} for e in extras],
        )
    )
    return used


def run(args: argparse.Namespace) -> int:
    """Convert and report the BIDS path written."""
    from mne.channels import make_standard_montage
    from mne_bids import BIDSPath, write_raw_bids

    from workers.errors import InputError
    from workers.replay import load_recording
    from workers.session_store import RECORDING_FILE, SessionStore, dig, recording_files

    info = SessionStore(args.session).read_info()
    parts = recording_files(args.session)
    if not parts:
        raise InputError(f"{args.session}: no {RECORDING_FILE} (was recording disabled?)")
    subject = _label(args.subject or str(info.get("subject", "01")))
    task = _label(args.task or str(dig(info, "protocol", "meta", "name") or "eegs"))
    notch = dig(info, "protocol", "preprocessing", "notch_hz")
    line = notch[0] if isinstance(notch, list) and notch else None
    line = line if isinstance(line, int | float) and not isinstance(line, bool) else None
    montage = make_standard_montage("colin27_1020")
    known = {ch.lower() for ch in montage.ch_names}
    for k, xdf in enumerate(parts, start=1):
        rec = load_recording(xdf)
        raw = rec.to_raw()
        columns = _annotate(raw, rec)
        if any(ch.lower() in known for ch in raw.ch_names):  # 10-20 names: add positions
            raw.set_montage(montage, match_case=False, on_missing="ignore")
        raw.info["line_freq"] = line
        path = BIDSPath(
            subject=subject,
            session=_label(args.bids_session) if args.bids_session else None,
            task=task,
            run=k if len(parts) > 1 else None,
            root=args.out,
            datatype="eeg",
        )
        try:
            write_raw_bids(
                raw,
                path,
                format="BrainVision",
                allow_preload=True,
                overwrite=args.overwrite,
                verbose="error",
                extra_columns_descriptions={k: EVENT_COLUMNS[k] for k in columns} or None,
            )
        except FileExistsError as err:
            raise InputError(
                f"{args.out}: this subject's recording is there already ({err}); choose a "
                "new folder or add --overwrite"
            ) from None
        print(f"BIDS-EEG written: {path.fpath} (from {xdf.name})")
    return 0

"""Write a session's recording as BIDS-EEG (mne-bids), markers as events.

The EEG and marker streams of SESSION/recording.xdf become one BrainVision recording
in a BIDS tree under OUT, with every marker's "event" in events.tsv. A resumed session
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


def run(args: argparse.Namespace) -> int:
    """Convert and report the BIDS path written."""
    from mne.channels import make_standard_montage
    from mne_bids import BIDSPath, write_raw_bids

    from workers.errors import InputError
    from workers.replay import load_recording
    from workers.session_store import RECORDING_FILE, SessionStore, recording_files

    info = SessionStore(args.session).read_info()
    parts = recording_files(args.session)
    if not parts:
        raise InputError(f"{args.session}: no {RECORDING_FILE} (was recording disabled?)")
    subject = _label(args.subject or str(info.get("subject", "01")))
    task = _label(args.task or info.get("protocol", {}).get("meta", {}).get("name", "eegs"))
    notch = info.get("protocol", {}).get("preprocessing", {}).get("notch_hz") or [None]
    montage = make_standard_montage("colin27_1020")
    known = {ch.lower() for ch in montage.ch_names}
    for k, xdf in enumerate(parts, start=1):
        raw = load_recording(xdf).to_raw()
        if any(ch.lower() in known for ch in raw.ch_names):  # 10-20 names: add positions
            raw.set_montage(montage, match_case=False, on_missing="ignore")
        raw.info["line_freq"] = notch[0]
        path = BIDSPath(
            subject=subject,
            session=_label(args.bids_session) if args.bids_session else None,
            task=task,
            run=k if len(parts) > 1 else None,
            root=args.out,
            datatype="eeg",
        )
        write_raw_bids(
            raw,
            path,
            format="BrainVision",
            allow_preload=True,
            overwrite=args.overwrite,
            verbose="error",
        )
        print(f"BIDS-EEG written: {path.fpath} (from {xdf.name})")
    return 0

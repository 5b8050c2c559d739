"""Epoch live EEG at every stimulus marker, store the epochs and publish them.

Connects to an LSL EEG stream (mne-lsl) and a JSON marker stream, cuts one epoch per
marker whose "event" matches the protocol, preprocesses and quality-flags it, writes it
to the session directory and publishes it over ZeroMQ. The whole session is recorded to
SESSION/recording.xdf by LabRecorder. Options override the protocol file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands._common import add_protocol_argument
from experiment_protocols import load_protocol

NAME = "acquire"
HELP = "epoch live EEG at each stimulus marker"
POLLS_STOP = True  # SIGTERM/Ctrl-C: stop cleanly (app.shutdown)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    add_protocol_argument(p)
    p.add_argument("--session", type=Path, required=True, metavar="DIR", help="session directory")
    p.add_argument("--eeg", metavar="NAME", help="EEG stream name (protocol: streams.eeg)")
    p.add_argument("--eeg-type", metavar="TYPE", help="EEG stream type ('' = any)")
    p.add_argument("--markers", metavar="NAME", help="marker stream name (streams.markers)")
    p.add_argument("--event", metavar="LABEL", help="marker event to epoch (epochs.event)")
    p.add_argument("--tmin", type=float, metavar="S", help="epoch start (epochs.tmin)")
    p.add_argument("--tmax", type=float, metavar="S", help="epoch end (epochs.tmax)")
    p.add_argument("--endpoint", metavar="URL", help="ZeroMQ PUB endpoint for epochs")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--no-record", action="store_true", help="do not write recording.xdf")


def run(args: argparse.Namespace) -> int:
    """Run the acquisition worker until --duration passes or it is stopped."""
    from app.shutdown import STOP
    from workers.acquisition import AcquisitionConfig
    from workers.acquisition import run as run_acquisition

    overrides = {
        "streams.eeg": args.eeg,
        "streams.eeg_type": args.eeg_type,
        "streams.markers": args.markers,
        "epochs.event": args.event,
        "epochs.tmin": args.tmin,
        "epochs.tmax": args.tmax,
        "network.epochs_endpoint": args.endpoint,
    }
    base = load_protocol(args.protocol)
    baseline = base.epochs.baseline
    if args.tmin is not None and baseline is not None and baseline[0] < args.tmin:
        overrides["epochs.baseline"] = (args.tmin, baseline[1])  # keep it inside the window
    protocol = base.with_overrides(overrides)
    config = AcquisitionConfig(
        protocol=protocol,
        session_dir=args.session,
        duration_s=args.duration,
        record=protocol.recording.enabled and not args.no_record,
    )
    acq = run_acquisition(config, stop=STOP.is_set)
    print(f"{acq.n_epochs} epochs written to {args.session}")
    return 0

"""Stream a recording as live LSL EEG plus JSON markers built from its events.

Reads XDF files from EEGS sessions and any file MNE reads (FIF, EDF, BDF,
BrainVision, EEGLAB). The EEG stream is called NAME and the marker stream
NAME-markers; each event becomes a marker {"event": <description>, "trial": k, ...}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "replay"
HELP = "stream a recorded file as live LSL EEG + markers"
POLLS_STOP = True  # SIGTERM/Ctrl-C: stop cleanly (app.shutdown)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("file", type=Path, metavar="FILE", help="recording to replay")
    p.add_argument("--name", default="EEGS-EEG", help="EEG stream name (default: EEGS-EEG)")
    p.add_argument("--start", type=float, default=0.0, metavar="S", help="start at S seconds")
    p.add_argument("--duration", type=float, default=None, metavar="D", help="replay D seconds")
    p.add_argument("--chunk", type=float, default=0.02, metavar="S", help="chunk length (s)")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for consumers of both streams before starting",
    )
    p.add_argument(
        "--lead",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between the streams opening (or consumers arriving) and the first "
        "sample, so that recorders and epochers are connected (default 1)",
    )
    p.add_argument(
        "--rate",
        default=None,
        metavar="LABEL=R,...",
        help="replay the events so labelled as rated trials: a stimulus marker (--event, "
        "--block) and a rating marker of valence R each, e.g. face=7,house=3 to calibrate a "
        "session's personal estimator on a labelled recording",
    )
    p.add_argument("--block", default="calibration", help="the rated trials' block (--rate)")
    p.add_argument(
        "--event", default="stimulus_onset", help="the rated trials' marker event (--rate)"
    )
    p.add_argument("--scale", default="1,9", metavar="LOW,HIGH", help="the ratings' scale (--rate)")


def run(args: argparse.Namespace) -> int:
    """Replay the file once, then exit."""
    from app.shutdown import STOP
    from workers.errors import InputError
    from workers.replay import ReplayConfig
    from workers.replay import run as run_replay

    label_ratings = None
    if args.rate:
        label_ratings = {}
        for item in args.rate.split(","):
            label, sep, value = item.partition("=")
            try:
                label_ratings[label.strip()] = float(value)
            except ValueError:
                sep = ""
            if not sep or not label.strip():
                raise InputError(f"--rate: {item!r} is not LABEL=NUMBER")
    try:
        lo, hi = (float(v) for v in args.scale.split(","))
    except ValueError:
        raise InputError(f"--scale {args.scale!r}: expected LOW,HIGH") from None
    bad = {k: v for k, v in (label_ratings or {}).items() if not lo <= v <= hi}
    if not lo < hi or bad:
        raise InputError(f"--rate {bad or ''} / --scale {args.scale!r}: ratings on LOW < HIGH")
    config = ReplayConfig(
        path=args.file,
        name=args.name,
        start_s=args.start,
        duration_s=args.duration,
        chunk_s=args.chunk,
        wait_s=args.wait,
        lead_s=args.lead,
        label_ratings=label_ratings,
        block=args.block,
        event=args.event,
        scale=(lo, hi),
    )
    n = run_replay(config, stop=STOP.is_set)
    print(f"replayed {args.file.name}: {n} markers")
    return 0

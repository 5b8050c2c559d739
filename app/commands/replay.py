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


def run(args: argparse.Namespace) -> int:
    """Replay the file once, then exit."""
    from app.shutdown import STOP
    from workers.replay import ReplayConfig
    from workers.replay import run as run_replay

    config = ReplayConfig(
        path=args.file,
        name=args.name,
        start_s=args.start,
        duration_s=args.duration,
        chunk_s=args.chunk,
        wait_s=args.wait,
        lead_s=args.lead,
    )
    n = run_replay(config, stop=STOP.is_set)
    print(f"replayed {args.file.name}: {n} markers")
    return 0

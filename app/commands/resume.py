"""Continue an interrupted session (a crash, a power cut, Ctrl-C) from where it stopped.

Uses the session's own protocol.toml (same streams and endpoints) and starts its
processes again. Blocks that ended are skipped; the round that was cut short shows
only the images that never went on screen; the generation worker takes over the
rewards, images and generator state of the one before; epochs that were stored but
never scored are scored. Trial ids continue, so no trial is lost or counted twice.
The new part of the recording goes to recording-part2.xdf (then -part3, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "resume"
HELP = "continue an interrupted session from where it stopped"
POLLS_STOP = True  # SIGTERM/Ctrl-C: stop cleanly (app.shutdown)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("session", type=Path, metavar="SESSION", help="session directory")
    display = p.add_mutually_exclusive_group()
    display.add_argument(
        "--headless",
        action="store_true",
        default=None,
        help="virtual display (default: as the session was started)",
    )
    display.add_argument("--windowed", dest="headless", action="store_false", help="a real window")


def run(args: argparse.Namespace) -> int:
    """Resume, then print the session's figures."""
    from app.pilot import resume_session
    from app.shutdown import STOP

    summary = resume_session(args.session, headless=args.headless, stop=STOP.is_set)
    print(f"session {args.session} resumed and written")
    for key in ("n_trials", "reward_by_round", "oracle_affect_by_round"):
        print(f"  {key}: {summary.get(key)}")
    return 0

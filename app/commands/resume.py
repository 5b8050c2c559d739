"""Continue an interrupted session (a crash, a power cut, Ctrl-C) from where it stopped.

Uses the session's own protocol.toml (same streams and endpoints) and starts its
processes again. Blocks that ended are skipped; the round that was cut short shows
only the images that never went on screen; the generation worker takes over the
rewards, images and generator state of the one before; epochs that were stored but
never scored are scored. Trial ids continue, so no trial is lost or counted twice.
The new part of the recording goes to recording-part2.xdf (then -part3, ...).

A session stopped by a full disk is continued on another one with ``--to DIR``: it is
copied to DIR/NAME (the room there checked first; the original left untouched) and the
copy is resumed. A session directory moved by hand is followed as well: the paths of its
own folders in its protocol are rewritten to where it is now.
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
    p.add_argument(
        "--to",
        type=Path,
        default=None,
        metavar="DIR",
        help="copy the session to DIR/NAME first (another disk: its own disk is full) and "
        "resume the copy; the free space there is checked, the original is left untouched",
    )


def run(args: argparse.Namespace) -> int:
    """Resume, then print the session's figures."""
    from app.pilot import resume_session
    from app.shutdown import STOP

    summary = resume_session(args.session, headless=args.headless, stop=STOP.is_set, to=args.to)
    where = args.session if args.to is None else args.to / args.session.resolve().name
    print(f"session {where} resumed and written")
    for key in ("n_trials", "reward_by_round", "oracle_affect_by_round"):
        print(f"  {key}: {summary.get(key)}")
    return 0

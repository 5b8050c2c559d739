"""Run a full closed-loop pilot against the simulated brain model, on the CPU.

Starts the brain model, the acquisition, the generation worker (procedural backend
unless the protocol says otherwise) and the PsychoPy presentation, runs the pilot
protocol's calibration, closed-loop and validation blocks, and writes the session
directory: recording, epochs, images, dataset/, summary.json and report.html.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands._common import (
    add_dashboard_arguments,
    add_protocol_argument,
    dashboard_options,
)
from app.reward_option import add_reward_argument
from experiment_protocols.brain_model import REALISM_LEVELS, SUBJECT_FAMILIES

NAME = "pilot"
HELP = "full closed-loop pilot against the brain model (CPU)"
POLLS_STOP = True  # SIGTERM/Ctrl-C: stop cleanly (app.shutdown)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="session directory")
    add_protocol_argument(p, "pilot.toml")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        metavar="N",
        help="closed-loop rounds, round 0 included (protocol's by default)",
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="simulated subject and generator seed"
    )
    p.add_argument(
        "--headless", action="store_true", help="run the presentation on a virtual display (Xvfb)"
    )
    p.add_argument(
        "--family",
        choices=tuple(SUBJECT_FAMILIES),
        default=None,
        help="the simulated participant's family (brain_model.family; default: the protocol's)",
    )
    p.add_argument(
        "--realism",
        choices=tuple(REALISM_LEVELS),
        default=None,
        help="how much of its affect one trial of its EEG carries (brain_model.realism; "
        "default: the protocol's, lab: as decodable as real recordings; clean: the "
        "uncalibrated, far easier model)",
    )
    add_reward_argument(p)
    add_dashboard_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Run the pilot and print where its results are."""
    from app.pilot import SessionConfig, run_session
    from app.shutdown import STOP
    from workers.errors import InputError

    if args.out.exists() and any(args.out.iterdir()):
        raise InputError(f"{args.out} exists and is not empty: choose a new --out")
    summary = run_session(
        SessionConfig(
            out=args.out,
            protocol_path=args.protocol,
            subject=f"brain-model-{args.seed}",
            rounds=args.rounds,
            seed=args.seed,
            headless=args.headless,
            reward=args.reward,
            family=args.family,
            realism=args.realism,
            **dashboard_options(args),
        ),
        stop=STOP.is_set,
    )
    print(f"session written to {args.out}")
    for key in ("reward_by_round", "oracle_affect_by_round", "round_ready_latency_ms"):
        print(f"  {key}: {summary.get(key)}")
    return 0

"""Run a closed-loop session with a participant: a real amplifier, or a replayed file.

Like `eegs pilot`, but the EEG comes from the amplifier's LSL app (streams.eeg of the
protocol; check it first with `eegs doctor`) or, with --source replay:FILE, from a
recording replayed live. --worker tcp://HOST:PORT uses a generation worker already
running elsewhere (a GPU server; non-loopback addresses need the protocol's CURVE keys).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands._common import add_dashboard_arguments, dashboard_options

NAME = "run"
HELP = "closed-loop session with an amplifier (or --source replay:FILE)"
POLLS_STOP = True  # SIGTERM/Ctrl-C: stop cleanly (app.shutdown)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--protocol", type=Path, required=True, metavar="FILE", help="protocol file")
    p.add_argument("--subject", required=True, metavar="ID", help="participant id")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="session directory (default: sessions/SUBJECT-DATE-TIME)",
    )
    p.add_argument(
        "--source",
        default="amplifier",
        metavar="SRC",
        help="amplifier (default) | replay:FILE | brain-model",
    )
    p.add_argument(
        "--worker",
        default=None,
        metavar="URL",
        help="endpoint of a running generation worker (default: start one here)",
    )
    p.add_argument("--rounds", type=int, default=None, metavar="N", help="closed-loop rounds")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="generator seed")
    p.add_argument("--headless", action="store_true", help="virtual display (tests, demos)")
    p.add_argument("--skip-doctor", action="store_true", help="skip the pre-flight check")
    add_dashboard_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Pre-flight check, then the session."""
    import time

    from app.pilot import SessionConfig, run_session
    from app.shutdown import STOP
    from workers.errors import InputError

    if not (args.source in ("amplifier", "brain-model") or args.source.startswith("replay:")):
        raise InputError(
            f"--source {args.source!r}: expected amplifier, brain-model or replay:FILE"
        )
    if args.source.startswith("replay:") and not Path(args.source[7:]).exists():
        raise InputError(f"--source {args.source!r}: no such file")
    out = args.out or Path("sessions") / f"{args.subject}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty: choose a new --out")
    if args.source == "amplifier" and not args.skip_doctor:
        from app.doctor import FAIL, run_checks
        from experiment_protocols import load_protocol

        findings = run_checks(load_protocol(args.protocol), out)
        for f in findings:
            print(f"{f.status.upper():4}  {f.check}  {f.detail}")
        if any(f.status == FAIL for f in findings):
            print("pre-flight check failed: fix the above or pass --skip-doctor")
            return 1
    summary = run_session(
        SessionConfig(
            out=out,
            protocol_path=args.protocol,
            subject=args.subject,
            rounds=args.rounds,
            seed=args.seed,
            headless=args.headless,
            source=args.source,
            worker=args.worker,
            **dashboard_options(args),
        ),
        stop=STOP.is_set,
    )
    print(f"session written to {out}: reward_by_round {summary.get('reward_by_round')}")
    return 0

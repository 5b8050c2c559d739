"""Pre-flight check of a session: streams, channels, sampling rate, GPU, disk, display.

Exits 1 when any check fails, so that scripts can refuse to start a session.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.commands._common import add_protocol_argument, protocol_from_args

NAME = "doctor"
HELP = "pre-flight checks: streams, channels, rate, GPU, disk, display"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    add_protocol_argument(p)
    p.add_argument("--eeg", metavar="NAME", help="EEG stream name (protocol: streams.eeg)")
    p.add_argument(
        "--session",
        type=Path,
        default=Path("sessions"),
        metavar="DIR",
        help="where the session will be written (for the disk check)",
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to look for streams")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")


def run(args: argparse.Namespace) -> int:
    """Run every check and print a table (or JSON)."""
    from app.doctor import FAIL, run_checks

    protocol = protocol_from_args(args, {"streams.eeg": args.eeg})
    findings = run_checks(protocol, args.session, args.timeout)
    if args.json:
        print(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        width = max(len(f.check) for f in findings)
        for f in findings:
            print(f"{f.status.upper():4}  {f.check:<{width}}  {f.detail}")
    return 1 if any(f.status == FAIL for f in findings) else 0

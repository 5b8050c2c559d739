"""Rebuild a session's dataset/, summary.json and report.html from its directory.

Works on any session, an interrupted one included: everything is derived from
events.jsonl, the epochs and the images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "summarize"
HELP = "rebuild a session's dataset, summary.json and report.html"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("session", type=Path, metavar="SESSION", help="session directory")


def run(args: argparse.Namespace) -> int:
    """Rebuild and print the summary."""
    from app.pilot import SESSION_PROTOCOL
    from app.session_outputs import write_outputs
    from experiment_protocols import load_protocol
    from workers.session_store import SessionStore

    info = SessionStore(args.session).read_info()
    protocol = load_protocol(args.session / SESSION_PROTOCOL)
    summary = write_outputs(args.session, protocol, pilot=info.get("source") == "brain-model")
    print(json.dumps(summary, indent=2))
    return 0

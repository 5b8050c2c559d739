"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from experiment_protocols import Protocol, load_protocol


def add_protocol_argument(parser: argparse.ArgumentParser) -> None:
    """``--protocol FILE`` (default: the shipped default protocol)."""
    parser.add_argument(
        "--protocol",
        type=Path,
        default=None,
        metavar="FILE",
        help="protocol TOML file (default: experiment_protocols/default.toml)",
    )


def protocol_from_args(args: argparse.Namespace, overrides: dict) -> Protocol:
    """Load ``--protocol`` and apply command-line overrides (``None`` = keep)."""
    return load_protocol(args.protocol).with_overrides(overrides)

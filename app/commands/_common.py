"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from experiment_protocols import Protocol, load_protocol


def add_protocol_argument(parser: argparse.ArgumentParser, default: str = "default.toml") -> None:
    """``--protocol FILE`` (``default``: the shipped protocol the command falls back to)."""
    parser.add_argument(
        "--protocol",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"protocol TOML file (default: experiment_protocols/{default})",
    )


def add_classifiers_argument(parser: argparse.ArgumentParser) -> None:
    """``--classifiers LIST``: the decoders to cross-validate."""
    parser.add_argument(
        "--classifiers",
        default="atms_fc,eegnet",
        metavar="LIST",
        help="comma-separated classifier kinds (default: atms_fc,eegnet)",
    )


def protocol_from_args(args: argparse.Namespace, overrides: dict) -> Protocol:
    """Load ``--protocol`` and apply command-line overrides (``None`` = keep)."""
    return load_protocol(args.protocol).with_overrides(overrides)


def add_dashboard_arguments(p: argparse.ArgumentParser) -> None:
    """``--dashboard-port``, ``--dashboard-host`` and ``--no-dashboard`` (eegs pilot, run)."""
    p.add_argument(
        "--dashboard-port",
        type=int,
        default=None,
        metavar="PORT",
        help="port of the experimenter's dashboard (default: a free one; the URL is printed)",
    )
    p.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        metavar="ADDR",
        help="serve the dashboard on this address instead of loopback (still needs its token)",
    )
    p.add_argument("--no-dashboard", action="store_true", help="no dashboard")


def dashboard_options(args: argparse.Namespace) -> dict:
    """The SessionConfig fields of :func:`add_dashboard_arguments`."""
    return {
        "dashboard": not args.no_dashboard,
        "dashboard_port": args.dashboard_port,
        "dashboard_host": args.dashboard_host,
    }
